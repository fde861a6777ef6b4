"""Import boundaries: the numpy-only stages never import torch, and figures never touch pyplot.

A stage that runs on a machine without a GPU stack (tiling on a slide server, the synthetic
cohort, stain fitting, metrics) must not pay torch's import (seconds, ~1 GiB of shared libraries)
or depend on it. Each check runs in a fresh interpreter, so what an earlier test imported does not
hide a violation. Every module of a stage is checked, found by walking the package, so a new module
is covered without editing this file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Stage packages that must stay importable without torch, and their modules that may import it
#: (the torch backend of the stain transform and the training-time augmentation built on it).
NUMPY_ONLY = {
    "her2scope.slide": (),
    "her2scope.tiling": (),
    "her2scope.stain": ("her2scope.stain._torch", "her2scope.stain.augment"),
    "her2scope.cohort": (),
    "her2scope.synth": (),
    "her2scope.cells": (),
    "her2scope.scoring": (),  # the model is loaded inside functions; cells use slide_id_of
}
#: Single modules of otherwise torch-using stages.
NUMPY_ONLY_MODULES = (
    "her2scope.evaluate.metrics",
    "her2scope.evaluate.aggregate",
    "her2scope.evaluate.bootstrap",
    "her2scope.evaluate.calibration",
    "her2scope",
    "her2scope.config",
    "her2scope.cli",
)


def _modules_of(package: str, allowed: tuple[str, ...]) -> list[str]:
    pkg = importlib.import_module(package)
    found = [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")]
    return [m for m in found if m not in allowed]


def _first_torch_importer(modules: list[str]) -> str:
    """Import ``modules`` in order in a fresh interpreter; the first that brought torch in, or ''."""
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
            if "torch" in sys.modules:
                print(name)
                break
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("package", list(NUMPY_ONLY))
def test_numpy_only_stage_never_imports_torch(package: str) -> None:
    modules = _modules_of(package, NUMPY_ONLY[package])
    assert len(modules) > 1 or package == "her2scope.slide"
    assert _first_torch_importer(modules) == "", "the module named above imports torch"


@pytest.mark.slow  # one interpreter per module
def test_numpy_only_modules_never_import_torch() -> None:
    for name in NUMPY_ONLY_MODULES:  # one interpreter each: an earlier import must not mask one
        assert _first_torch_importer([name]) == "", f"{name} imports torch"


@pytest.mark.slow  # imports torch
def test_the_check_itself_sees_torch() -> None:
    """The probe must be able to fail: a module known to import torch is reported."""
    assert _first_torch_importer(["her2scope.stain.macenko", "her2scope.stain._torch"]) == (
        "her2scope.stain._torch"
    )


def test_figures_are_drawn_without_pyplot(tmp_path: Path) -> None:
    """Library figures use matplotlib's object API: no pyplot import, no backend switch, so
    plotting inside a process that has its own GUI backend (a notebook) changes nothing there."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import matplotlib
        import numpy as np
        from her2scope.evaluate.plots import plot_confusion
        from her2scope.scoring.heatmap import draw_heatmap
        from her2scope.explain.gallery import write_gallery
        out = Path({str(tmp_path)!r})
        plot_confusion(np.array([[3, 1], [0, 4]]), ["neg", "pos"], out / "c.png", "t")
        thumb = np.full((40, 60, 3), 230, np.uint8)
        vmap = np.full((4, 6), np.nan)
        vmap[1:3, 2:4] = 1.0
        draw_heatmap(out / "h.png", thumb, vmap, 10.0, ["0", "1+", "2+"], "t")
        tile = np.zeros((8, 8, 3), np.uint8)
        write_gallery(out / "g.png", [("class 0", [(tile, tile, "a")])], "t")
        for name in ("c.png", "h.png", "g.png"):
            assert (out / name).read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n", name
        print("matplotlib.pyplot" in sys.modules, matplotlib.rcParams["backend"])
        """
    )
    # a backend the caller chose (read without resolving it, which would import pyplot)
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "svg"]
