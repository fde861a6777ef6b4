"""The run layout: where each output of an out folder lives (her2scope.layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from her2scope.layout import OutLayout, RunLayout, TilesLayout, run_dir_name


def _paths(obj: object) -> dict[str, Path]:
    """Every Path-valued property of a layout object, by name."""
    out = {}
    for name in dir(type(obj)):
        if isinstance(getattr(type(obj), name), property):
            value = getattr(obj, name)
            if isinstance(value, Path):
                out[name] = value
    return out


@pytest.mark.parametrize(
    ("model", "folder"),
    [("alexnet", "alexnet"), ("timm:convnext_tiny", "timm_convnext_tiny"), ("hf/a:b", "hf_a_b")],
)
def test_run_dir_name(model: str, folder: str) -> None:
    assert run_dir_name(model) == folder
    assert OutLayout(Path("o")).run(model).root == Path("o") / "runs" / folder


def test_every_output_has_its_own_path_under_its_root(tmp_path: Path) -> None:
    out = OutLayout(tmp_path)
    run = out.run("alexnet")
    everything = {
        **{f"out.{k}": v for k, v in _paths(out).items()},
        **{f"run.{k}": v for k, v in _paths(run).items() if k != "root"},
        **{f"tiles.{k}": v for k, v in _paths(out.tiles).items() if k != "root"},
    }
    assert len(everything) >= 30  # the introspection found the layout's properties
    by_path: dict[Path, list[str]] = {}
    for k, v in everything.items():
        by_path.setdefault(v, []).append(k)
    same = {str(p): ks for p, ks in by_path.items() if len(ks) > 1}
    assert same == {}, f"two outputs share a path: {same}"
    for k, v in everything.items():
        assert v == tmp_path or tmp_path in v.parents, k
    for k, v in _paths(run).items():
        assert v == run.root or run.root in v.parents, k
    for k, v in _paths(out.tiles).items():
        assert v == out.tiles.root or out.tiles.root in v.parents, k


def test_per_slide_paths() -> None:
    tiles = TilesLayout(Path("t"))
    assert tiles.sidecar("S1") == Path("t/slides/S1.json")
    assert tiles.qc_png("S1") == Path("t/qc/S1.png")
    run = RunLayout(Path("r"))
    assert run.checkpoint("best") == run.best == Path("r/checkpoints/best.pt")
    assert run.slide_map("S1") == Path("r/explain/slides/S1_cam.png")
    assert run.slide_map("S1", Path("elsewhere")) == Path("elsewhere/slides/S1_cam.png")


def test_runs_lists_configured_models_first_then_other_folders(tmp_path: Path) -> None:
    out = OutLayout(tmp_path)
    for name in ("vgg16", "alexnet", "alexnet_heldout_B", "timm_resnet18"):
        (out.runs_dir / name).mkdir(parents=True)
    (out.runs_dir / "notes.txt").write_text("not a run")
    names = [r.name for r in out.runs(["timm:resnet18", "alexnet", "densenet121"])]
    # densenet121 has no folder; the others follow by name
    assert names == ["timm_resnet18", "alexnet", "alexnet_heldout_B", "vgg16"]
    assert OutLayout(tmp_path / "empty").runs(["alexnet"]) == []


def test_layouts_are_frozen_and_accept_text_paths() -> None:
    out = OutLayout("somewhere")  # type: ignore[arg-type]
    assert out.report == Path("somewhere/report.html")
    with pytest.raises(AttributeError):
        out.root = Path("else")  # type: ignore[misc]
