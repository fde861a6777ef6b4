"""``her2scope export``: a trained run's best model as an ONNX file (for ``predict --backend onnx``)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""
    app.command(name="export")(export)


def export(
    run: Path = typer.Argument(..., help="Trained run folder.", show_default=False),
    onnx: bool = typer.Option(
        False, "--onnx", help="Write the model as ONNX (the one format so far)."
    ),
    out: Path = typer.Option(
        None, "--out", help="Output .onnx file. Default: RUN/checkpoints/best.onnx."
    ),
) -> None:
    """Export the run's best checkpoint for deployment.

    --onnx writes an ONNX graph (opset 17, dynamic batch axis, the run's input size) that
    `her2scope predict --backend onnx` runs with ONNX Runtime, then checks it: ONNX Runtime and
    torch are run on the same random batch and the largest probability difference is printed.
    The file records the checkpoint's SHA-256; predict refuses it once the checkpoint changes.
    Never replaces a file of the run other than an earlier export. See docs/performance.md.
    """
    from her2scope.cli.predict import _check_run
    from her2scope.errors import ConfigError

    if not onnx:
        raise ConfigError("say which format: --onnx (the only one so far)")
    _check_run(run)
    try:
        import onnx as _onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--onnx needs the onnx and onnxruntime packages; install her2scope's 'onnx' extra "
            "(pip install 'her2scope[onnx]')"
        ) from None
    from her2scope._io import ensure_writable, refuse_replacing_inputs
    from her2scope.engine.onnx_backend import default_onnx_path, export_onnx, file_sha256

    target = Path(out) if out is not None else default_onnx_path(run)
    if target.suffix.lower() != ".onnx":
        raise ConfigError(f"--out '{target}': give a file name ending in .onnx")
    inputs = [p for p in run.rglob("*") if p.is_file() and p.suffix.lower() != ".onnx"]
    refuse_replacing_inputs(
        [target], inputs, "choose another --out (export never replaces a file of the run)"
    )
    ensure_writable(target.parent)

    from her2scope.engine.checkpoint import load_run_model

    model, meta = load_run_model(run, "best", device="cpu")
    path = export_onnx(model, meta, target, file_sha256(meta.checkpoint))
    diff = check_export(model, meta, path)
    typer.echo(
        f"ONNX model written to {path} (opset 17, input [batch, 3, {meta.input_px}, "
        f"{meta.input_px}]); ONNX Runtime vs torch on 4 random tiles: max probability "
        f"difference {diff:.1e}"
    )


def check_export(model: object, meta: object, path: Path, n: int = 4) -> float:
    """Largest |p_onnx - p_torch| over ``n`` random uint8 tiles (both fp32)."""
    import numpy as np
    import torch

    from her2scope.engine.infer import InferenceOptions, Predictor

    rng = np.random.default_rng(0)
    px = int(meta.input_px)  # type: ignore[attr-defined]
    xb = torch.from_numpy(rng.integers(0, 256, size=(n, 3, px, px), dtype=np.uint8))
    dev = torch.device("cpu")
    ref = Predictor(model, meta, dev, InferenceOptions(channels_last=False, precision="fp32"))  # type: ignore[arg-type]
    onx = Predictor(None, meta, dev, InferenceOptions(backend="onnx", onnx_path=str(path)))  # type: ignore[arg-type]
    with ref.prepare():
        p_ref = ref.probs(xb)
    with onx.prepare():
        p_onx = onx.probs(xb)
    return float(np.abs(p_onx - p_ref).max())
