"""How far each inference path's probabilities are from eager fp32, on a trained run's test tiles.

    python benchmarks/check_inference_agreement.py demo_out/runs/alexnet [--split test]

For the tiles of the split (``RUN/splits.csv``, stain-normalised as the run was), runs
``predict_tiles`` as eager fp32 (contiguous memory, no autocast: the reference), the default
path (channels_last fp32), bf16 autocast (CPUs with native bf16) and ONNX Runtime fp32 (the model
exported to a temporary file), and prints per path: the largest tile probability difference, the
tile and slide (mean rule) class agreement, and the largest slide probability difference.
docs/performance.md quotes its output.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from her2scope._io import read_parquet
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.infer import InferenceOptions, cpu_bf16_native
    from her2scope.engine.onnx_backend import export_onnx, file_sha256
    from her2scope.engine.predict import predict_tiles
    from her2scope.stain import load_normalizers

    model, meta = load_run_model(args.run)
    tiles_dir = Path(meta.tiles_dir)
    if not tiles_dir.is_absolute():
        tiles_dir = args.run.parent.parent / tiles_dir.name
    splits = pd.read_csv(args.run / "splits.csv", dtype=str)
    ids = set(splits.loc[splits["split"] == args.split, "slide_id"])
    tiles = read_parquet(tiles_dir / "tiles.parquet")
    tiles = tiles[tiles["slide_id"].isin(ids)].reset_index(drop=True)
    norms = load_normalizers(tiles_dir, meta.config.stain)
    print(
        f"{meta.model_name}, {meta.input_px} px input, {len(tiles)} {args.split} tiles of "
        f"{len(ids)} slides; torch {torch.__version__}"
    )

    def run(opts: InferenceOptions) -> np.ndarray:
        return predict_tiles(model, meta, tiles, norms, batch_size=64, options=opts)

    ref = run(InferenceOptions(channels_last=False, precision="fp32"))
    paths = {"default (channels_last fp32)": InferenceOptions()}
    if cpu_bf16_native():
        paths["bf16 autocast (opt-in)"] = InferenceOptions(precision="bf16")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(
            model, meta, Path(tmp) / "m.onnx", file_sha256(meta.checkpoint)
        ).as_posix()
        paths["onnx fp32"] = InferenceOptions(backend="onnx", onnx_path=onnx_path)
        sid = tiles["slide_id"].to_numpy()
        order = sorted(set(sid))

        def slide_probs(p: np.ndarray) -> np.ndarray:
            return np.stack([p[sid == s].mean(axis=0) for s in order])

        ref_s = slide_probs(ref)
        for name, opts in paths.items():
            got = run(opts)
            got_s = slide_probs(got)
            print(
                f"  {name:28s} max |dp| tile {np.abs(got - ref).max():.1e}, slide "
                f"{np.abs(got_s - ref_s).max():.1e}; class agreement tiles "
                f"{(got.argmax(1) == ref.argmax(1)).sum()}/{len(ref)}, slides "
                f"{(got_s.argmax(1) == ref_s.argmax(1)).sum()}/{len(order)}"
            )


if __name__ == "__main__":
    main()
