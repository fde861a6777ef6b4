"""`her2scope predict` end to end vs the bare model forward, old path vs new paths, in one run.

Makes two small synthetic IHC slides and a run folder holding a randomly initialised model (the
weights do not change the speed), then measures, interleaved over ``--rounds`` rounds (medians):

- ``bare eager``: the model alone, fp32, contiguous memory, on a ready uint8 batch normalised as
  predict does (``to_model_input``), all CPUs to torch: img/s;
- ``predict``: ``score_slides`` on the two slides (tiling, stain fit, QC gates, reading, the
  model, heatmap and outputs; the model loaded once per call) in tiles/s of the whole call, for
  ``old`` (eager fp32, tiles read in the calling thread, all CPUs to torch: the path before this
  benchmark existed), ``default`` (``--precision auto``: on a CPU with native bf16, bf16 with the
  fp32 recheck of slides near a decision; channels_last fp32 elsewhere; reader threads planned
  with torch's), ``fp32`` (channels_last fp32 everywhere: the default before the guarded bf16),
  and the opt-in ``bf16`` (no recheck; CPUs with native bf16 only) and ``onnx`` (ONNX Runtime
  fp32) paths;

and prints each as a ratio to the bare eager forward. Two sizes: the study's (512 px tiles at
0.5 µm/px, 512 px model input) and the demo's (256 px at 1 µm/px, 128 px input).

    python benchmarks/bench_predict.py                       # alexnet, both sizes, ~4 min on 2 CPUs
    python benchmarks/bench_predict.py --models alexnet,resnet34 --rounds 3
    python benchmarks/bench_predict.py --bare-only --models alexnet,resnet34   # forwards only
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {
    # name: (tile_px, target_mpp, input_px, slide mpp, tiles per slide side (x, y), batch)
    "512px": (512, None, 512, 0.5, (6, 4), 16),
    "demo": (256, 1.0, 128, 0.5, (12, 8), 64),
}
H_OD = np.array([0.65, 0.70, 0.29])
DAB_OD = np.array([0.27, 0.57, 0.78])


def make_slide(path: Path, w: int, h: int, seed: int) -> Path:
    """An IHC-like image: hematoxylin and DAB concentrations from smooth fields and speckle."""
    import cv2

    from her2scope.slide.write import write_pyramidal_tiff

    rng = np.random.default_rng(seed)

    def field(scale: int) -> np.ndarray:
        small = rng.random((max(2, h // scale), max(2, w // scale))).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)

    c_h = 0.25 + 0.8 * field(64) * (rng.random((h, w), dtype=np.float32) > 0.35)
    c_d = 0.9 * field(256) ** 2
    od = c_h[..., None] * H_OD + c_d[..., None] * DAB_OD
    rgb = np.clip(250.0 * np.exp(-od), 0, 255).astype(np.uint8)
    return write_pyramidal_tiff(path, rgb, mpp=0.5)


def make_run(run_dir: Path, model_name: str, size: str) -> Path:
    import pandas as pd
    import torch

    from her2scope.config import RunConfig
    from her2scope.engine.checkpoint import save_checkpoint
    from her2scope.engine.config import TrainConfig
    from her2scope.models import create_model
    from her2scope.stain.config import StainConfig
    from her2scope.tiling.config import TilingConfig

    tile_px, target_mpp, input_px, *_ = SIZES[size]
    torch.manual_seed(0)
    model = create_model(model_name, 3, pretrained=False, input_px=input_px).eval()
    # a confident model, as a trained one is on most slides: random weights give near-uniform
    # probabilities, where the default path's fp32 recheck (scoring.guard) would rescore every
    # slide. The bias of the last layer decides the class; the convolutions' cost is unchanged.
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.copy_(torch.tensor([4.0, 0.0, -4.0]))
    cfg = RunConfig(
        synthetic=True,
        tiling=TilingConfig(tile_px=tile_px, target_mpp=target_mpp, max_white=0.6),
        stain=StainConfig(mode="preserve_dab", fit_tiles=32),
        train=TrainConfig(models=(model_name,), input_px=input_px, pretrained=False),
    )
    run_dir.mkdir(parents=True)
    pd.DataFrame(
        {
            "slide_id": ["x"],
            "patient_id": ["p"],
            "center": ["A"],
            "label": ["1+"],
            "split": ["train"],
        }
    ).to_csv(run_dir / "splits.csv", index=False)
    save_checkpoint(
        run_dir / "checkpoints" / "best.pt",
        model=model,
        model_name=model_name,
        classes=("1+", "2+", "3+"),
        config=cfg,
        input_px=input_px,
        tiles_dir=run_dir,
        epoch=1,
    )
    return run_dir


def bare_eager(model_name: str, size: str, n_img: int) -> float:
    """img/s of the model alone: fp32, contiguous, all CPUs, inference mode."""
    import torch

    from her2scope.data.dataset import to_model_input
    from her2scope.engine.infer import available_cpus
    from her2scope.models import create_model, model_preprocessing

    input_px, batch = SIZES[size][2], SIZES[size][5]
    torch.set_num_threads(available_cpus())
    model = create_model(model_name, 3, pretrained=False, input_px=input_px).eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in model_preprocessing(model_name))
    rng = np.random.default_rng(0)
    xb = torch.from_numpy(rng.integers(0, 256, (batch, 3, input_px, input_px), dtype=np.uint8))
    with torch.inference_mode():
        model(to_model_input(xb, mean, std))  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < n_img:
            model(to_model_input(xb, mean, std))
            done += batch
    return done / (time.perf_counter() - t0)


def bare_paths(model_name: str, size: str, rounds: int, tmp: Path) -> dict[str, float]:
    """img/s of the model alone on a ready uint8 batch, per inference path (Predictor.probs:
    normalisation, forward, softmax), interleaved over ``rounds``; medians."""
    import torch

    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.infer import InferenceOptions, Predictor, available_cpus
    from her2scope.engine.onnx_backend import default_onnx_path, export_onnx, file_sha256

    input_px, batch = SIZES[size][2], SIZES[size][5]
    run = make_run(tmp / f"bare_{size}_{model_name}", model_name, size)
    model, meta = load_run_model(run)
    export_onnx(model, meta, default_onnx_path(run), file_sha256(meta.checkpoint))
    n = available_cpus()
    paths = {
        "eager fp32": InferenceOptions(channels_last=False, precision="fp32", threads=n),
        "channels_last fp32": InferenceOptions(threads=n),
        "channels_last bf16": InferenceOptions(precision="bf16", threads=n),
        "onnx fp32": InferenceOptions(backend="onnx", threads=n),
    }
    rng = np.random.default_rng(0)
    xb = torch.from_numpy(rng.integers(0, 256, (batch, 3, input_px, input_px), dtype=np.uint8))
    preds = {k: Predictor(model, meta, torch.device("cpu"), o) for k, o in paths.items()}
    res: dict[str, list[float]] = {k: [] for k in paths}
    reps = 2 if input_px >= 512 else 4
    for _ in range(rounds):
        for k, p in preds.items():
            with p.prepare():
                p.probs(xb)  # warm-up
                t0 = time.perf_counter()
                for _ in range(reps):
                    p.probs(xb)
                res[k].append(reps * batch / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in res.items()}


def predict_call(
    slides: list[Path], run: Path, out: Path, opts: object, batch: int
) -> tuple[float, float, float]:
    """tiles/s of one score_slides call (everything after the imports), tiles/s of its
    prediction steps alone (reading + model: ``timing_s.predict`` of the slide JSONs), and the
    seconds per slide spent outside them (tiling, stain fit, QC, heatmap, writing, model load)."""
    import json

    from her2scope.scoring.score import output_paths, score_slides, slide_id_of

    t0 = time.perf_counter()
    rep = score_slides(
        slides, run, out, force=True, rescore=True, batch_size=batch, inference=opts, device="cpu"
    )  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    if not rep.ok:
        raise SystemExit(f"predict failed: {rep.failures}")
    n = float(rep.summary["n_tiles"].sum())
    docs = [json.loads(output_paths(out, slide_id_of(s))["json"].read_text()) for s in slides]
    t_pred = sum(d["timing_s"]["predict"] for d in docs)
    rescored = sum(bool((d["inference"].get("guard") or {}).get("rescored_in_fp32")) for d in docs)
    if rescored:
        print(f"    ({rescored} of {len(docs)} slide(s) rescored in fp32 by the guard)", flush=True)
    return n / dt, n / t_pred, (dt - t_pred) / len(slides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="alexnet")
    ap.add_argument("--sizes", default="512px,demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--bare-only",
        action="store_true",
        help="only the model forward per path (eager, channels_last, +bf16, ONNX), no predict",
    )
    ap.add_argument(
        "--scale", type=int, default=1, help="slides this many times wider and taller (more tiles)"
    )
    ap.add_argument(
        "--paths",
        default="old,fp32,default,bf16,onnx",
        help="also: inline, oversub (thread plans)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("her2scope").setLevel(logging.ERROR)

    import torch

    from her2scope.engine.infer import InferenceOptions, available_cpus, cpu_bf16_native

    n_cpu = available_cpus()
    paths = args.paths.split(",")
    if "bf16" in paths and not cpu_bf16_native():
        print("this CPU has no native bf16: the bf16 path is left out")
        paths.remove("bf16")
    opts = {
        "old": InferenceOptions(channels_last=False, precision="fp32", threads=n_cpu, readers=0),
        "default": InferenceOptions(),
        "fp32": InferenceOptions(precision="fp32"),
        "bf16": InferenceOptions(precision="bf16"),
        "onnx": InferenceOptions(backend="onnx"),
        # the thread plan's alternatives, for choosing it: all CPUs to torch, no / one reader
        "inline": InferenceOptions(threads=n_cpu, readers=0),
        "oversub": InferenceOptions(threads=n_cpu, readers=1),
    }
    print(
        f"{n_cpu} CPU(s); torch {torch.__version__}; native bf16: {cpu_bf16_native()}; "
        f"rounds: {args.rounds} (medians)"
    )
    if args.bare_only:
        with tempfile.TemporaryDirectory() as tmp_s:
            for size in args.sizes.split(","):
                for model_name in args.models.split(","):
                    r = bare_paths(model_name, size, args.rounds, Path(tmp_s))
                    base = r["eager fp32"]
                    print(
                        f"{model_name} {size}: "
                        + " | ".join(f"{k} {v:.1f} img/s = {v / base:.2f}x" for k, v in r.items()),
                        flush=True,
                    )
        return
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for size in args.sizes.split(","):
            tile_px, target_mpp, _, slide_mpp, (nx, ny), batch = SIZES[size]
            nx, ny = nx * args.scale, ny * args.scale
            step = round(tile_px * (target_mpp or slide_mpp) / slide_mpp)
            slides = [
                make_slide(tmp / f"{size}_S{i}.tif", nx * step, ny * step, seed=i) for i in (1, 2)
            ]
            for model_name in args.models.split(","):
                run = make_run(tmp / f"run_{size}_{model_name}", model_name, size)
                if "onnx" in paths:
                    from her2scope.engine.checkpoint import load_run_model
                    from her2scope.engine.onnx_backend import (
                        default_onnx_path,
                        export_onnx,
                        file_sha256,
                    )

                    model, meta = load_run_model(run)
                    export_onnx(model, meta, default_onnx_path(run), file_sha256(meta.checkpoint))
                n_tiles = 2 * nx * ny
                res: dict[str, list[float]] = {k: [] for k in ["bare", *paths]}
                step: dict[str, list[float]] = {k: [] for k in paths}
                fixed: list[float] = []
                predict_call(slides, run, tmp / "warm", opts["default"], batch)  # warm caches
                for _ in range(args.rounds):
                    res["bare"].append(bare_eager(model_name, size, max(n_tiles, 2 * batch)))
                    for p in paths:
                        whole, pred, rest = predict_call(
                            slides, run, tmp / f"o_{p}", opts[p], batch
                        )
                        res[p].append(whole)
                        step[p].append(pred)
                        fixed.append(rest)
                med = {k: statistics.median(v) for k, v in res.items()}
                med_step = {k: statistics.median(v) for k, v in step.items()}
                print(
                    f"{model_name} {size} ({n_tiles} tiles in 2 slides): bare eager fp32 "
                    f"{med['bare']:.1f} img/s",
                    flush=True,
                )
                for p in paths:
                    print(
                        f"  {p:8s} predict {med[p]:7.1f} tiles/s = {med[p] / med['bare']:.2f}x bare"
                        f" | prediction step {med_step[p]:7.1f} tiles/s = "
                        f"{med_step[p] / med['bare']:.2f}x bare",
                        flush=True,
                    )
                print(
                    f"  outside the prediction step: {statistics.median(fixed):.2f} s per slide "
                    "(tiling, stain fit, QC gates, heatmap, outputs, model load / 2)",
                    flush=True,
                )
    print("predict = the whole call (tiling, stain fit, QC gates, reading, model, heatmap and")
    print("outputs); prediction step = reading + model (predict_tiles). Ratios are to the bare")
    print("eager fp32 forward of the same model, all measured in this run. Targets (issue 16):")
    print("predict >= 1.3x bare at 512 px, >= 0.5x at the demo size.")


if __name__ == "__main__":
    sys.exit(main())
