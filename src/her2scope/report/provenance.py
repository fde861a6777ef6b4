"""Report section on provenance: seed, machine, package versions, run times and the config."""

from __future__ import annotations

import platform
import time

from her2scope.config import RunConfig
from her2scope.layout import OutLayout
from her2scope.report._markup import esc, missing, read_json, table

#: Packages whose versions the report lists (absent ones as "not installed").
PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "scikit-learn",
    "openslide-python",
    "openslide-bin",
    "tiffslide",
)


def versions() -> list[tuple[str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    from her2scope import __version__

    out = [("her2scope", __version__), ("python", platform.python_version())]
    for pkg in PACKAGES:
        try:
            out.append((pkg, version(pkg)))
        except PackageNotFoundError:
            out.append((pkg, "not installed"))
    return out


def provenance_section(out: OutLayout, cfg: RunConfig) -> str:
    import yaml

    from her2scope.config import to_dict

    parts = ["<h2 id='provenance'>Provenance</h2>"]
    parts.append(
        f"<p>Seed: <b>{cfg.seed}</b> (split seed {cfg.cohort.split_seed}); "
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{esc(platform.node())} ({esc(platform.platform())}).</p>"
    )
    parts.append("<h3>Versions</h3>" + table(["package", "version"], versions()))
    timings = read_json(out.timings)
    if isinstance(timings, dict) and isinstance(timings.get("steps"), list):
        rows = [
            [
                (f"{s['stage']}[{s['model']}]" if s.get("model") else s["stage"]),
                f"{float(s.get('seconds', 0)):.1f}",
                s.get("status", ""),
            ]
            for s in timings["steps"]
            if isinstance(s, dict) and "stage" in s
        ]
        parts.append(
            "<h3>Run times (this invocation)</h3>" + table(["stage", "seconds", "status"], rows)
        )
    else:
        parts.append(missing("run times (timings.json)", "written by her2scope run"))
    parts.append(
        "<h3>Configuration</h3><pre>"
        + esc(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        + "</pre>"
    )
    return "".join(parts)
