"""Cells per second of `her2scope cells` vs a plain scikit-image pipeline, on one 4096² region.

The region is a SYNTHETIC 2+ slide of centre A (4096 × 4096 px at 0.5 µm/px = 4.2 mm², tumour
nests, stroma, some glass), rendered in memory. Both pipelines get the same RGB array and the same
thread settings (run with OMP_NUM_THREADS / OPENCV threads as you like; the ratio is what counts):

- her2scope: ``her2scope.cells.analyse_region`` (nuclei, split, cells, membrane band,
  completeness) with the slide's stain vectors, i.e. exactly what ``her2scope cells`` runs per
  region; the vectors are fitted once per slide (here on the region, timed and printed
  separately, and also folded into a second "whole slide" ratio);
- baseline, written here as a user would with scikit-image: ``rgb2hed`` (textbook vectors) →
  Otsu threshold of hematoxylin → small objects removed → Euclidean distance → ``peak_local_max``
  → ``watershed`` → ``expand_labels`` (cells) → membrane ring = cell boundary → ``regionprops``
  (mean DAB of the ring per cell).

Prints each pipeline's seconds and cells/s, the speed ratio, and the extrapolated time of a
25 mm² ROI for her2scope. Usage: ``python benchmarks/bench_cells.py [--size 4096]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_region(size: int) -> np.ndarray:
    from her2scope.synth import params as P
    from her2scope.synth.render import SlidePlan, render_slide

    plan = SlidePlan("bench", "bench", P.CENTER_A, "2+", size, 0.0, (11, 4))
    return render_slide(plan).rgb


def fit_stain_matrix(rgb: np.ndarray) -> np.ndarray:
    """The slide's stain vectors: `her2scope cells` fits them ONCE per slide (or reads them from
    `stain fit`'s sidecar), not per region; timed separately below."""
    from her2scope.stain import StainNormalizer

    norm = StainNormalizer().fit(rgb)
    return norm.stain_matrix if norm.stain_matrix is not None else norm.reference.stain_matrix


def her2scope_cells(rgb: np.ndarray, mpp: float, matrix: np.ndarray) -> int:
    from her2scope.cells import CellConfig, analyse_region

    return analyse_region(rgb, matrix, mpp, CellConfig()).n


def skimage_cells(rgb: np.ndarray, mpp: float) -> int:
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import regionprops
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import expand_labels, find_boundaries, watershed

    hed = rgb2hed(rgb)
    h = gaussian(hed[..., 0], sigma=0.6 / mpp)
    nuclei = h > threshold_otsu(h)
    import inspect

    small = round(12 / mpp**2)  # 12 µm²; scikit-image ≥ 0.26 renamed min_size to max_size
    kw = (
        "max_size"
        if "max_size" in inspect.signature(remove_small_objects).parameters
        else "min_size"
    )
    nuclei = ndi.binary_fill_holes(remove_small_objects(nuclei, **{kw: small}))
    dist = ndi.distance_transform_edt(nuclei)
    peaks = peak_local_max(dist, min_distance=round(3 / mpp), labels=ndi.label(nuclei)[0])
    markers = np.zeros(dist.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=nuclei)
    cells = expand_labels(labels, distance=5 / mpp)
    ring = np.where(find_boundaries(cells, mode="inner"), cells, 0)
    props = regionprops(ring, intensity_image=hed[..., 2])
    _ = [p.intensity_mean for p in props]
    return len(props)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    mpp = 0.5
    t = time.perf_counter()
    rgb = make_region(a.size)
    print(
        f"rendered a SYNTHETIC {a.size}² region at {mpp} µm/px in {time.perf_counter() - t:.1f} s"
    )
    t = time.perf_counter()
    matrix = fit_stain_matrix(rgb)
    fit_s = time.perf_counter() - t
    her2scope_cells(rgb[:512, :512], mpp, matrix)  # warm-up (imports, OpenCV)
    skimage_cells(rgb[:512, :512], mpp)
    # the two pipelines alternate, and the best of the repeats counts, so a busy machine
    # slows both alike
    pipelines = (
        ("her2scope", lambda x, m: her2scope_cells(x, m, matrix)),
        ("scikit-image", skimage_cells),
    )
    best = {name: (0, float("inf")) for name, _ in pipelines}
    for _ in range(a.repeats):
        for name, fn in pipelines:
            t = time.perf_counter()
            n = fn(rgb, mpp)
            best[name] = (n, min(best[name][1], time.perf_counter() - t))
    results = best
    for name, (n, secs) in results.items():
        print(f"{name:>13}: {n} cells in {secs:.2f} s = {n / secs:.0f} cells/s")
    print(f"her2scope's stain fit (once per slide, not per region): {fit_s:.2f} s")
    (n1, t1), (n2, t2) = results["her2scope"], results["scikit-image"]
    print(f"speed ratio (cells/s her2scope / scikit-image): {(n1 / t1) / (n2 / t2):.2f}x")
    print(f"time ratio (scikit-image / her2scope): {t2 / t1:.2f}x")
    with_fit = (n1 / (t1 + fit_s)) / (n2 / t2)
    print(
        f"speed ratio if this region were a whole slide (one stain fit included): {with_fit:.2f}x"
    )
    area_mm2 = (a.size * mpp / 1000) ** 2
    print(
        f"extrapolated 25 mm² ROI: {t1 * 25 / area_mm2 + fit_s:.0f} s (her2scope: analysis + one fit)"
    )


if __name__ == "__main__":
    main()
