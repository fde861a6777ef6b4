"""``RUN/provenance.json``: what a run was trained from, beyond its config.

Written by :func:`her2scope.engine.train.train_model`; read by ``predict`` and the report. Keys:
``weights`` (``pretrained_loaded``: bool, ``source``: a file path, ``"random init"`` or why,
``sha256`` of the weights file or None), ``train_tile_mpp`` (median µm/px of the training
tiles), ``tiles_dir`` (absolute). No torch import here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from her2scope.layout import RunLayout

log = logging.getLogger(__name__)


def load_run_provenance(run_dir: str | Path) -> dict[str, Any]:
    """The run's provenance record, or ``{}`` for a run trained before it existed."""
    path = RunLayout(Path(run_dir)).provenance
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("run provenance %s unreadable (%s); treated as absent", path, exc)
        return {}
    return d if isinstance(d, dict) else {}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
