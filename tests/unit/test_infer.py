"""The inference path of predict_tiles: fast paths agree with eager fp32, ONNX round trip, threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from her2scope.engine.infer import (
    InferenceOptions,
    Predictor,
    cpu_bf16_native,
    plan_threads,
    prefetch_batches,
)

MODEL = "timm:test_resnet"
PX = 64
CLASSES = ("1+", "2+", "3+")
#: documented in docs/performance.md: fp32 paths agree with eager fp32 to float rounding
FP32_TOL = 1e-5
#: bf16 autocast (opt-in): probabilities move by up to ~1e-2 on trained models
BF16_TOL = 5e-2


def _meta(run_dir: str = "", checkpoint: str = "") -> object:
    from her2scope.config import RunConfig
    from her2scope.engine.checkpoint import RunMeta
    from her2scope.models import model_preprocessing

    mean, std = model_preprocessing(MODEL)
    return RunMeta(MODEL, CLASSES, RunConfig(), PX, "", 1, run_dir, mean, std, checkpoint)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    from her2scope.models import create_model

    torch.manual_seed(0)
    m = create_model(MODEL, len(CLASSES), pretrained=False)
    with torch.no_grad():  # a head with large weights: confident, unequal probabilities
        for p in m.parameters():
            if p.ndim == 2:
                p.mul_(20.0)
    return m.eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, size=(12, 3, PX, PX), dtype=np.uint8))


def _probs(
    model: object, opts: InferenceOptions, xb: torch.Tensor, meta: object = None
) -> np.ndarray:
    p = Predictor(model, meta or _meta(), torch.device("cpu"), opts)  # type: ignore[arg-type]
    with p.prepare():
        return p.probs(xb)


def _assert_same_calls(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    """Probabilities within ``tol``; the arg-max equal wherever the top two differ by more than
    2 × tol (a closer pair may flip within the tolerance)."""
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)
    top2 = np.sort(b, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
    assert clear.sum() >= len(b) // 2, "test inputs too close to ties to check the calls"
    np.testing.assert_array_equal(a.argmax(1)[clear], b.argmax(1)[clear])


def _eager(model: torch.nn.Module, xb: torch.Tensor) -> np.ndarray:
    """The reference: the model as before this path existed (contiguous fp32, no autocast)."""
    from her2scope.data.dataset import to_model_input
    from her2scope.models import model_preprocessing

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in model_preprocessing(MODEL))
    with torch.inference_mode():
        return torch.softmax(model(to_model_input(xb, mean, std)), 1).numpy()


def test_default_path_is_channels_last_fp32_and_matches_eager(model, batch) -> None:
    ref = _eager(model, batch)
    p = Predictor(model, _meta(), torch.device("cpu"))  # type: ignore[arg-type]
    rec = p.record()
    assert (rec["backend"], rec["precision"], rec["channels_last"]) == ("torch", "fp32", True)
    with p.prepare():
        got = p.probs(batch)
    _assert_same_calls(got, ref, FP32_TOL)
    # the model handed in is given back as it came: contiguous weights, train/eval mode kept
    conv = next(w for w in model.parameters() if w.ndim == 4)
    assert conv.is_contiguous() and not model.training


def test_bf16_is_opt_in_and_within_its_tolerance(model, batch) -> None:
    ref = _eager(model, batch)
    p = Predictor(model, _meta(), torch.device("cpu"), InferenceOptions(precision="bf16"))  # type: ignore[arg-type]
    if not cpu_bf16_native():
        assert p.precision == "fp32" and "no native bf16" in p.record()["note"]
        return
    assert p.record()["precision"] == "bf16"
    with p.prepare():
        got = p.probs(batch)
    assert np.abs(got - ref).max() > 0  # it did run in bf16
    _assert_same_calls(got, ref, BF16_TOL)


def test_onnx_export_round_trip(model, batch, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from her2scope.engine.onnx_backend import export_onnx, file_sha256

    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"stand-in checkpoint")
    meta = _meta(str(tmp_path), str(ckpt))
    path = export_onnx(model, meta, tmp_path / "m.onnx", file_sha256(ckpt))  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "m.onnx"]  # atomic: no temp
    opts = InferenceOptions(backend="onnx", onnx_path=str(path))
    got = _probs(None, opts, batch, meta)
    _assert_same_calls(got, _eager(model, batch), FP32_TOL)
    got_odd = _probs(None, opts, batch[:5], meta)  # the batch axis is dynamic
    np.testing.assert_allclose(got_odd, got[:5], rtol=0, atol=FP32_TOL)

    from her2scope.errors import ConfigError

    ckpt.write_bytes(b"retrained since")
    with pytest.raises(ConfigError, match="another version of"):
        _probs(None, opts, batch, meta)


def test_matrix_pool_equals_adaptive_pooling() -> None:
    """AlexNet's 6×6 adaptive pool after a 15×15 map (512 px) cannot be exported as such; the
    replacement must give the same averages."""
    from torch import nn

    from her2scope.engine.onnx_backend import _pool_matrix, exportable

    for n_in, n_out in [(15, 6), (3, 6), (7, 7), (13, 5), (1, 6)]:
        x = torch.randn(2, 1, n_in)
        want = nn.functional.adaptive_avg_pool1d(x, n_out)
        got = torch.from_numpy(_pool_matrix(n_in, n_out)) @ x[..., None]
        torch.testing.assert_close(got[..., 0], want, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(6), nn.Flatten()).eval()
    x = torch.randn(3, 3, 17, 17)  # 15×15 before the pool
    swapped = exportable(m, 17)
    assert swapped is not m and isinstance(m[1], nn.AdaptiveAvgPool2d)  # the model is untouched
    assert not isinstance(swapped[1], nn.AdaptiveAvgPool2d)
    torch.testing.assert_close(swapped(x), m(x), rtol=0, atol=1e-6)
    m2 = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(4)).eval()
    assert exportable(m2, 18) is m2  # 16×16 → 4×4 exports as is: the model itself


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16, 64])
def test_threads_and_readers_never_exceed_the_cpus(n: int) -> None:
    t, r = plan_threads(n, "cpu")
    assert t >= 1 and r >= 0 and t + r <= max(n, 1)
    assert plan_threads(n, "cpu", readers=0) == (n, 0)
    t2, r2 = plan_threads(n, "cpu", threads=n)
    assert (t2, r2) == (n, 0)
    assert plan_threads(n, "cpu", threads=1, readers=3) == (1, 3)  # both given: kept


def test_threads_plan_on_one_and_two_cores() -> None:
    assert plan_threads(1, "cpu") == (1, 0)
    assert plan_threads(2, "cpu") == (2, 0)  # the model needs both cores; read between batches
    assert plan_threads(8, "cpu") == (7, 1)
    assert plan_threads(16, "cpu") == (14, 2)
    assert plan_threads(2, "cpu", readers=1) == (1, 1)  # readers asked for: compute gets the rest
    assert plan_threads(8, "cuda") == (1, 7)


class _FakeTiles:
    """Stands in for TileDataset: tile i is filled with i (mod 256)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._slides: dict = {}
        self.closed = 0

    def __len__(self) -> int:
        return self.n

    def read_rgb(self, i: int) -> np.ndarray:
        return np.full((2, 2, 3), i % 256, dtype=np.uint8)

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("readers", [0, 1, 3])
def test_prefetch_keeps_the_order(readers: int) -> None:
    ds = _FakeTiles(23)
    batches = list(prefetch_batches(ds, 5, readers))  # type: ignore[arg-type]
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    firsts = torch.cat(batches)[:, 0, 0, 0].tolist()
    assert firsts == list(range(23))


def test_bad_options_are_refused() -> None:
    from her2scope.errors import ConfigError

    with pytest.raises(ConfigError, match="bf16 runs on the torch backend"):
        Predictor(None, _meta(), torch.device("cpu"), InferenceOptions("onnx", "bf16"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backend 'tf'"):
        Predictor(None, _meta(), torch.device("cpu"), InferenceOptions("tf"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="her2scope export"):
        Predictor(None, _meta("/nonexistent"), torch.device("cpu"), InferenceOptions("onnx"))  # type: ignore[arg-type]
