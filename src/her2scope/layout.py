"""Where every output of her2scope lives: the one place that spells its file and folder names.

Three small frozen views of a folder, each a pure path calculation (nothing is created or read):

- :class:`TilesLayout` — a tiles folder (``her2scope tile``; ``OUT/tiles`` in a pipeline run);
- :class:`RunLayout` — one training run (``her2scope train``; ``OUT/runs/<model>``);
- :class:`OutLayout` — the pipeline's output folder (``her2scope run``), holding the two above.

A stage asks its layout for a path (``RunLayout(run_dir).results``) instead of joining a name
itself, so renaming an output is one edit here, and the report renders exactly what the layouts
point at. This module imports nothing from her2scope (every layer may use it) and nothing heavy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# ---- file and folder names (each spelled here only) -------------------------------------------

TILE_TABLE = "tiles.parquet"
TILING_REPORT = "tiling_report.json"
SIDECAR_DIR = "slides"
TILE_QC_DIR = "qc"
EXPORTED_TILES_DIR = "tiles"

RUN_CONFIG = "config.yaml"
SPLITS_CSV = "splits.csv"
METRICS_JSONL = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
PROVENANCE_JSON = "provenance.json"
CALIBRATION_JSON = "calibration.json"
SITE_CALIBRATION_JSON = "site_calibration.json"
PREDICTIONS_PARQUET = "predictions.parquet"
RESULTS_JSON = "results.json"
PLOTS_DIR = "plots"
EXPLAIN_DIR = "explain"
GALLERY_PNG = "gallery.png"
GALLERY_HTML = "gallery.html"
POINTING_JSON = "pointing_game.json"
SLIDE_MAP_DIR = "slides"
PIPELINE_STARTED_JSON = ".pipeline_started.json"

TILES_DIR = "tiles"
RUNS_DIR = "runs"
COMPARE_DIR = "compare"
COMPARISON_CSV = "comparison.csv"
COMPARISON_MD = "comparison.md"
CELLS_DIR = "cells"
CELLS_AGREEMENT_JSON = "cells_agreement.json"
CELLS_SUMMARY_CSV = "cells_summary.csv"
REPORT_HTML = "report.html"
TIMINGS_JSON = "timings.json"
STAMPS_DIR = ".stamps"
RESOLVED_CONFIG = "config.resolved.yaml"


def run_dir_name(model_name: str) -> str:
    """Folder of a model's run under ``runs/`` (``timm:convnext_tiny`` → ``timm_convnext_tiny``)."""
    return model_name.replace(":", "_").replace("/", "_")


@dataclass(frozen=True)
class TilesLayout:
    """A tiles folder: the tile table, one JSON sidecar and one QC image per slide."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def table(self) -> Path:
        """``tiles.parquet``: one row per kept tile (columns in docs/ARCHITECTURE.md)."""
        return self.root / TILE_TABLE

    @property
    def report(self) -> Path:
        """``tiling_report.json``: counts and failures per slide of the last tiling."""
        return self.root / TILING_REPORT

    @property
    def sidecar_dir(self) -> Path:
        return self.root / SIDECAR_DIR

    def sidecar(self, slide_id: str) -> Path:
        """``slides/<slide_id>.json``: geometry, tile counts and (after ``stain fit``) stain."""
        return self.sidecar_dir / f"{slide_id}.json"

    @property
    def qc_dir(self) -> Path:
        return self.root / TILE_QC_DIR

    def qc_png(self, slide_id: str) -> Path:
        return self.qc_dir / f"{slide_id}.png"

    def exported_tiles(self, slide_id: str) -> Path:
        """Folder of the tile images ``her2scope tile --export-tiles`` writes for one slide."""
        return self.root / EXPORTED_TILES_DIR / slide_id


@dataclass(frozen=True)
class RunLayout:
    """One training run: config, splits, checkpoints, evaluation and explanation outputs."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        """The resolved config the run was trained with (rewritten by training)."""
        return self.root / RUN_CONFIG

    @property
    def splits(self) -> Path:
        return self.root / SPLITS_CSV

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one JSON line per epoch."""
        return self.root / METRICS_JSONL

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / CHECKPOINT_DIR

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/<which>.pt`` (``best`` or ``last``)."""
        return self.checkpoint_dir / f"{which}.pt"

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def best_onnx(self) -> Path:
        """``checkpoints/best.onnx``: ``her2scope export RUN --onnx`` of the best checkpoint."""
        return self.checkpoint_dir / "best.onnx"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def provenance(self) -> Path:
        return self.root / PROVENANCE_JSON

    @property
    def calibration(self) -> Path:
        return self.root / CALIBRATION_JSON

    @property
    def site_calibration(self) -> Path:
        return self.root / SITE_CALIBRATION_JSON

    @property
    def predictions(self) -> Path:
        """``predictions.parquet``: the evaluated split's tile probabilities (calibrated)."""
        return self.root / PREDICTIONS_PARQUET

    @property
    def results(self) -> Path:
        """``results.json``: metrics per level with CIs (schema in docs/evaluation.md)."""
        return self.root / RESULTS_JSON

    @property
    def plots_dir(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def explain_dir(self) -> Path:
        return self.root / EXPLAIN_DIR

    @property
    def gallery_png(self) -> Path:
        return self.explain_dir / GALLERY_PNG

    @property
    def gallery_html(self) -> Path:
        return self.explain_dir / GALLERY_HTML

    @property
    def pointing(self) -> Path:
        """``explain/pointing_game.json`` (synthetic cohorts with masks only)."""
        return self.explain_dir / POINTING_JSON

    def slide_map(self, slide_id: str, explain_dir: Path | None = None) -> Path:
        """The stitched map of one slide: ``explain/slides/<slide_id>_cam.png``."""
        base = self.explain_dir if explain_dir is None else Path(explain_dir)
        return slide_map_path(base, slide_id)

    @property
    def pipeline_started(self) -> Path:
        """Marker the pipeline writes before training (the hash a resume must match)."""
        return self.root / PIPELINE_STARTED_JSON


def slide_map_path(explain_dir: Path, slide_id: str) -> Path:
    """``<explain_dir>/slides/<slide_id>_cam.png`` (``explain_dir`` may be a user's ``--out``)."""
    return Path(explain_dir) / SLIDE_MAP_DIR / f"{slide_id}_cam.png"


@dataclass(frozen=True)
class OutLayout:
    """The output folder of ``her2scope run``: ``tiles/``, ``runs/<model>/``, ``compare/``,
    ``cells/``, ``report.html`` and the pipeline's own bookkeeping."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def tiles(self) -> TilesLayout:
        return TilesLayout(self.root / TILES_DIR)

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    def run(self, model_name: str) -> RunLayout:
        """The run folder of ``model_name`` (``runs/<run_dir_name(model_name)>``)."""
        return RunLayout(self.runs_dir / run_dir_name(model_name))

    def runs(self, model_names: Iterable[str] = ()) -> list[RunLayout]:
        """Run folders that exist: those of ``model_names`` first (in order), then any other
        folder under ``runs/`` by name (e.g. leave-one-centre-out folds)."""
        names = list(dict.fromkeys(run_dir_name(m) for m in model_names))
        if self.runs_dir.is_dir():
            names += sorted(
                p.name for p in self.runs_dir.iterdir() if p.is_dir() and p.name not in names
            )
        return [RunLayout(self.runs_dir / n) for n in names if (self.runs_dir / n).is_dir()]

    @property
    def compare_dir(self) -> Path:
        return self.root / COMPARE_DIR

    @property
    def comparison_csv(self) -> Path:
        return comparison_paths(self.compare_dir)[0]

    @property
    def cells_dir(self) -> Path:
        return self.root / CELLS_DIR

    @property
    def cells_agreement(self) -> Path:
        return self.cells_dir / CELLS_AGREEMENT_JSON

    @property
    def report(self) -> Path:
        return self.root / REPORT_HTML

    @property
    def timings(self) -> Path:
        """``timings.json``: seconds per stage of the last invocation."""
        return self.root / TIMINGS_JSON

    @property
    def stamps_dir(self) -> Path:
        return self.root / STAMPS_DIR

    @property
    def config(self) -> Path:
        """Where the pipeline writes the resolved config."""
        return self.root / RUN_CONFIG

    @property
    def resolved_config(self) -> Path:
        """Where it goes instead when ``config.yaml`` is the user's own file."""
        return self.root / RESOLVED_CONFIG


def comparison_paths(out_dir: Path) -> tuple[Path, Path]:
    """``(comparison.csv, comparison.md)`` in a comparison folder (``her2scope compare --out``)."""
    out_dir = Path(out_dir)
    return out_dir / COMPARISON_CSV, out_dir / COMPARISON_MD


def slide_id_of(path: str | Path) -> str:
    """Slide id = file name without its extension (``.ome.tif`` counts as one extension)."""
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem
