"""Stain normalisation speed and robustness: her2scope vs torchstain, in one run.

Tiles: 256 real-content 512² RGB tiles, each a mosaic of four random 256² crops (random flips) of
scikit-image's IHC image (``../shared/data/pypi-scikit-image/ihc.png``, or skimage.data when that is
absent), with ~10 % near-white tiles (glass: 238 ± 4 grey levels).

Times, on the same tiles, single-threaded unless --threads is given:
(a) torchstain numpy backend, fit + normalise per tile (failures counted, not hidden);
(b) torchstain torch backend, fit + normalise per tile (failures counted);
(c) her2scope ``standard`` per tile (fit + transform), with torchstain's reference, so the output is
    the same: the mean |difference| to (a) on the tiles (a) normalised is printed;
(d) her2scope ``transform`` with one slide-level fit (pooled over 64 tiles; numpy, per tile);
(e) her2scope NCHW torch ``transform`` of the whole set in batches of 64 (CPU).
Prints tiles/s and the ratios c/a, d/a, d/b. Run: ``python benchmarks/bench_stain.py [--n 256]``.

``--colour-counts`` instead times the two ways of counting the distinct colours of a fit's pooled
pixels (``stain.macenko.colour_counts``): numpy's sort-based ``unique`` (what her2scope uses) and
a 2^24-bin histogram, on 8, 16, 32 and 64 of the tiles (2-17 M pixels; equal results checked).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np


def make_tiles(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    path = Path(__file__).resolve().parents[2] / "shared/data/pypi-scikit-image/ihc.png"
    if path.is_file():
        from PIL import Image

        src = np.asarray(Image.open(path).convert("RGB"))
    else:
        from skimage.data import immunohistochemistry

        src = immunohistochemistry()
    rng = np.random.default_rng(seed)
    tiles = np.empty((n, 512, 512, 3), np.uint8)
    white = rng.random(n) < 0.10
    for i in range(n):
        if white[i]:
            tiles[i] = np.clip(238 + rng.normal(0, 4, (512, 512, 3)), 0, 255).astype(np.uint8)
            continue
        for qy in (0, 256):
            for qx in (0, 256):
                y, x = rng.integers(0, src.shape[0] - 256), rng.integers(0, src.shape[1] - 256)
                crop = src[y : y + 256, x : x + 256]
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                tiles[i, qy : qy + 256, qx : qx + 256] = crop
    return tiles, white


def run_torchstain(tiles: np.ndarray, backend: str) -> tuple[float, list, int]:
    import torchstain

    norm = torchstain.normalizers.MacenkoNormalizer(backend=backend)
    outs: list = []
    fails = 0
    t0 = time.perf_counter()
    for t in tiles:
        try:
            if backend == "numpy":
                outs.append(norm.normalize(t, stains=False)[0])
            else:
                import torch

                x = torch.from_numpy(t).permute(2, 0, 1).float()
                outs.append(norm.normalize(x, stains=False)[0])
        except Exception:
            fails += 1
            outs.append(None)
    return time.perf_counter() - t0, outs, fails


def colour_count_ways(tiles: np.ndarray, repeat: int = 5) -> None:
    """Distinct colours and their pixel counts: sort (``np.unique``) vs a 2^24-bin histogram."""

    def by_sort(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(code, return_counts=True)

    def by_histogram(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(code, minlength=1 << 24)
        present = np.flatnonzero(counts)
        return present, counts[present]

    for n in (8, 16, 32, 64):
        px = tiles[:n].reshape(-1, 3)
        code = (px[:, 0].astype(np.int32) << 16) | (px[:, 1].astype(np.int32) << 8) | px[:, 2]
        best = {}
        for name, way in (("sort", by_sort), ("histogram", by_histogram)):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                got = way(code)
                times.append(time.perf_counter() - t0)
            best[name] = (min(times), got)
        (ts, (ps, cs)), (th, (ph, ch)) = best["sort"], best["histogram"]
        assert np.array_equal(ps, ph) and np.array_equal(cs, ch), "the two ways disagree"
        print(
            f"{len(px) / 1e6:.1f} M px, {len(ps)} colours: sort {ts * 1e3:.1f} ms, histogram "
            f"{th * 1e3:.1f} ms (histogram / sort = {th / ts:.1f}x)",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--colour-counts", action="store_true", help="sort vs histogram, see above")
    args = ap.parse_args()
    if args.colour_counts:
        colour_count_ways(make_tiles(64)[0])
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from her2scope.stain import StainNormalizer, StainReference

    tiles, white = make_tiles(args.n)
    print(f"{args.n} tiles of 512², {int(white.sum())} near-white; {args.threads} thread(s)")

    t_a, out_a, fail_a = run_torchstain(tiles, "numpy")
    t_b, _, fail_b = run_torchstain(tiles, "torch")

    import torchstain

    ts = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ref = StainReference(np.asarray(ts.HERef).T, np.asarray(ts.maxCRef), "torchstain")
    out_c = []
    n_pass_c = 0
    t0 = time.perf_counter()
    for t in tiles:
        norm = StainNormalizer("standard", ref).fit(t)
        n_pass_c += norm.passthrough
        out_c.append(norm.transform(t))
    t_c = time.perf_counter() - t0
    diffs = [
        np.abs(c.astype(int) - a.astype(int)).mean()
        for a, c in zip(out_a, out_c, strict=True)
        if a is not None
    ]
    worst = max(diffs) if diffs else float("nan")

    t0 = time.perf_counter()
    slide = StainNormalizer("preserve_dab").fit(list(tiles[:64]))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_d = [slide.transform(t) for t in tiles]
    t_d = time.perf_counter() - t0
    assert all(np.isfinite(o).all() for o in out_d)

    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()
    t0 = time.perf_counter()
    for i in range(0, len(x), 64):
        slide.transform(x[i : i + 64])
    t_e = time.perf_counter() - t0

    n = args.n
    rate = {k: n / v for k, v in {"a": t_a, "b": t_b, "c": t_c, "d": t_d, "e": t_e}.items()}
    print(f"(a) torchstain numpy, per tile      {rate['a']:8.1f} tiles/s  failures: {fail_a}")
    print(f"(b) torchstain torch, per tile      {rate['b']:8.1f} tiles/s  failures: {fail_b}")
    print(
        f"(c) her2scope standard, per tile    {rate['c']:8.1f} tiles/s  failures: 0 "
        f"(passthrough: {n_pass_c}); mean |c-a| per tile ≤ {worst:.3f} grey levels"
    )
    print(
        f"(d) her2scope slide-fitted, numpy   {rate['d']:8.1f} tiles/s  failures: 0 (fit {t_fit:.2f} s once)"
    )
    print(
        f"(e) her2scope slide-fitted, torch   {rate['e']:8.1f} tiles/s  (NCHW batches of 64, CPU)"
    )
    print(
        f"ratios: c/a = {rate['c'] / rate['a']:.1f}x   d/a = {rate['d'] / rate['a']:.1f}x   "
        f"d/b = {rate['d'] / rate['b']:.1f}x   e/b = {rate['e'] / rate['b']:.1f}x"
    )


if __name__ == "__main__":
    main()
