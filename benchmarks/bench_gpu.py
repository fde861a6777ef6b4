"""GPU throughput at the study's 512 px: AMP + channels_last vs fp32, for AlexNet and ResNet34.

The device check of issue 16, prepared to run in a few minutes on a lent GPU (no GPU was lent to
the sessions that wrote it, so docs/performance.md has no GPU numbers yet). On one CUDA device,
for each model, it measures in one run:

1. **predict forward**: ``Predictor.probs`` (normalisation, forward, softmax) on a ready uint8
   batch already on the GPU — the run's ``train.precision`` autocast (``auto``: bf16 where the
   GPU has it, else fp16) with channels_last, against fp32 in contiguous memory: img/s;
2. **predict, whole call**: ``score_slides(device="cuda")`` on two synthetic 512-px slides
   (tiling, stain fit, QC gates, reading, the model, heatmap, outputs; the model loaded once per
   call) with ``--precision auto`` against ``--precision fp32``: tiles/s;
3. **train step**: ``engine.train.train_one_epoch`` — the product's step (uint8 batch to the
   GPU, normalisation, autocast, loss, GradScaler for fp16, AdamW, schedule) — on batches held
   in memory, with the product's CUDA defaults (``train.precision: auto``,
   ``train.channels_last: true``) against fp32 without channels_last: images/s.

Each pair alternates ``--rounds`` times (medians) and is printed with its ratio.

    python benchmarks/bench_gpu.py                      # alexnet,resnet34 at 512 px, ~3-5 min
    python benchmarks/bench_gpu.py --models resnet34 --batch 64
    python benchmarks/bench_gpu.py --cpu-smoke          # tiny sizes on the CPU: checks the script
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(dev: object) -> None:
    import torch

    if getattr(dev, "type", "") == "cuda":
        torch.cuda.synchronize(dev)  # type: ignore[arg-type]


def forward_rate(run: Path, dev: object, fast: bool, batch: int, steps: int) -> float:
    """img/s of Predictor.probs on a uint8 batch already on ``dev``."""
    import torch

    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.infer import InferenceOptions, Predictor

    model, meta = load_run_model(run, device=dev)  # type: ignore[arg-type]
    opts = InferenceOptions() if fast else InferenceOptions(precision="fp32", channels_last=False)
    pred = Predictor(model, meta, dev, opts)  # type: ignore[arg-type]
    px = meta.input_px
    xb = torch.randint(0, 256, (batch, 3, px, px), dtype=torch.uint8, device=dev)  # type: ignore[call-overload]
    with pred.prepare():
        pred.probs(xb)  # warm-up (kernel selection)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            pred.probs(xb)
        _sync(dev)
    return steps * batch / (time.perf_counter() - t0)


def train_rate(model_name: str, px: int, dev: object, fast: bool, batch: int, steps: int) -> float:
    """images/s of the product's training step on ``steps`` in-memory uint8 batches."""
    import torch

    from her2scope.engine.config import TrainConfig
    from her2scope.engine.train import build_training, train_one_epoch

    tcfg = TrainConfig(
        models=(model_name,),
        input_px=px,
        batch_size=batch,
        pretrained=False,
        precision="auto" if fast else "fp32",
        channels_last=fast,
        epochs=1,
        warmup_epochs=0,
    )
    labels = np.arange(batch * steps) % 3

    class _Tiles:  # what build_training reads of a dataset: its length and labels
        def __init__(self) -> None:
            self.labels = labels

        def __len__(self) -> int:
            return len(labels)

    data = SimpleNamespace(classes=("1+", "2+", "3+"), train_ds=_Tiles())
    tr = build_training(tcfg, model_name, data, dev)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randint(0, 256, (batch, 3, px, px), dtype=torch.uint8, generator=gen),
            torch.as_tensor(labels[i * batch : (i + 1) * batch]),
        )
        for i in range(steps)
    ]
    train_one_epoch(tr, batches[:2], 1, dev, "warm-up", show=False)  # type: ignore[arg-type]
    _sync(dev)
    t0 = time.perf_counter()
    _, n = train_one_epoch(tr, batches, 1, dev, "train", show=False)  # type: ignore[arg-type]
    _sync(dev)
    return n / (time.perf_counter() - t0)


def predict_call_rate(slides: list[Path], run: Path, out: Path, device: str, fast: bool) -> float:
    """tiles/s of one score_slides call on ``slides``."""
    from her2scope.engine.infer import InferenceOptions
    from her2scope.scoring.score import score_slides

    opts = InferenceOptions() if fast else InferenceOptions(precision="fp32", channels_last=False)
    t0 = time.perf_counter()
    rep = score_slides(
        slides, run, out, force=True, rescore=True, inference=opts, device=device, batch_size=64
    )
    dt = time.perf_counter() - t0
    if not rep.ok:
        raise SystemExit(f"predict failed: {rep.failures}")
    return float(rep.summary["n_tiles"].sum()) / dt


def _pair(label: str, unit: str, fast: list[float], slow: list[float]) -> None:
    f, s = statistics.median(fast), statistics.median(slow)
    print(
        f"  {label:22s} AMP + channels_last {f:8.1f} {unit} | fp32 {s:8.1f} {unit} | "
        f"ratio {f / s:.2f}x",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="alexnet,resnet34")
    ap.add_argument("--px", type=int, default=512, help="model input and tile size")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="batches per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (medians)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("her2scope").setLevel(logging.ERROR)

    import bench_predict as bp
    import torch

    if args.cpu_smoke:
        device, args.px, args.batch, args.steps, args.rounds = "cpu", 64, 4, 2, 1
    elif not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures a GPU (use --cpu-smoke to check it runs)")
        raise SystemExit(2)
    else:
        device = "cuda"
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (smoke test only)"
    print(f"{name}; torch {torch.__version__}; {args.px} px, batch {args.batch}, {args.steps} "
          f"batches per measurement, {args.rounds} round(s)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        # two slides of 512-px tiles at 0.5 µm/px (6 × 4 tiles each, or as many at --px)
        bp.SIZES["gpu"] = (args.px, None, args.px, 0.5, (6, 4), args.batch)
        side = (6 * args.px, 4 * args.px)
        slides = [bp.make_slide(tmp / f"S{i}.tif", *side, seed=i) for i in (1, 2)]
        for model_name in args.models.split(","):
            run = bp.make_run(tmp / f"run_{model_name}", model_name, "gpu")
            fwd: dict[bool, list[float]] = {True: [], False: []}
            call: dict[bool, list[float]] = {True: [], False: []}
            step: dict[bool, list[float]] = {True: [], False: []}
            predict_call_rate(slides, run, tmp / "warm", device, True)  # caches, kernels
            for _ in range(args.rounds):
                for fast in (True, False):
                    fwd[fast].append(forward_rate(run, dev, fast, args.batch, args.steps))
                    call[fast].append(
                        predict_call_rate(slides, run, tmp / f"o{int(fast)}", device, fast)
                    )
                    step[fast].append(
                        train_rate(model_name, args.px, dev, fast, args.batch, args.steps)
                    )
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
            print(f"{model_name} at {args.px} px:", flush=True)
            _pair("predict forward", "img/s", fwd[True], fwd[False])
            _pair("predict, whole call", "tiles/s", call[True], call[False])
            _pair("train step", "img/s", step[True], step[False])
    print("AMP = the run's train.precision autocast (auto: bf16 where supported, else fp16).")


if __name__ == "__main__":
    main()
