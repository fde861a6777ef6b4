"""Benchmark: render the default synthetic demo cohort; time, peak memory, tiles, baseline AUC.

Budget (issue 3): the default 24-patient cohort in under 2 minutes and under 2 GB of RAM on
2 cores. The script renders it serially and with 2 worker processes (each run in a fresh
subprocess whose whole process tree is sampled for resident memory), prints both and their ratio,
then counts the ROI tiles the demo will see (256 px at level 1 = 256 µm, ≤60 % white) and the
tile-level macro-AUC of the trivial DAB-histogram baseline per centre.

    .venv/bin/python benchmarks/bench_synth.py [--patients 24] [--slide-px 4096] [--keep DIR]

Numbers describe synthetic data only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

BUDGET_S = 120.0
BUDGET_MB = 2048.0


def _tree_rss_mb(root: int) -> float:
    """Resident memory (MB) of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_once(out: Path, patients: int, slide_px: int, workers: int) -> tuple[float, float]:
    """Render a cohort in a subprocess; return (wall seconds, peak process-tree RSS in MB)."""
    code = (
        "from her2scope.synth import make_cohort; "
        f"make_cohort({str(out)!r}, n_patients={patients}, slide_px={slide_px}, workers={workers})"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HER2SCOPE_NO_PROGRESS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_mb(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"make_cohort failed with exit status {rc}")
    return wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--slide-px", type=int, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep the 2-worker cohort here")
    args = ap.parse_args()

    from her2scope.synth import DEFAULT_SLIDE_PX
    from her2scope.synth.check import baseline_auc, tile_features

    slide_px = args.slide_px or DEFAULT_SLIDE_PX
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        t1, m1 = run_once(tmp / "serial", args.patients, slide_px, workers=1)
        t2, m2 = run_once(tmp / "par2", args.patients, slide_px, workers=2)
        manifest = tmp / "par2" / "manifest.csv"
        n_slides = len(manifest.read_text().splitlines()) - 1
        same = all(
            (tmp / "serial" / p.relative_to(tmp / "par2")).read_bytes() == p.read_bytes()
            for p in (tmp / "par2").rglob("*")
            if p.is_file()
        )
        print(f"synthetic cohort: {args.patients} patients, {n_slides} slides of {slide_px} px")
        print(f"  1 worker : {t1:6.1f} s  peak RSS {m1:6.0f} MB  ({t1 / n_slides:.2f} s/slide)")
        print(f"  2 workers: {t2:6.1f} s  peak RSS {m2:6.0f} MB  (speed-up ×{t1 / t2:.2f})")
        print(f"  identical bytes serial vs 2 workers: {same}")
        print(
            f"  budget: 2 workers use {t2 / BUDGET_S:.0%} of {BUDGET_S:.0f} s and "
            f"{m2 / BUDGET_MB:.0%} of {BUDGET_MB:.0f} MB"
        )

        t0 = time.perf_counter()
        tiles = tile_features(manifest, tile_px=256, level=1)
        per_slide = sorted(Counter(tiles.slide_id).values())
        print(
            f"ROI tiles (256 px at level 1 = 256 µm, ≤60 % white): {len(tiles.label)} in all, "
            f"per slide min {per_slide[0]} / median {per_slide[len(per_slide) // 2]} / "
            f"max {per_slide[-1]}  ({time.perf_counter() - t0:.1f} s)"
        )
        auc = baseline_auc(tiles)
        print("trivial baseline (logistic regression on DAB-OD histogram), tile-level macro-AUC:")
        for key, val in auc.items():
            print(f"  {key:10s} {val:.3f}")
        if args.keep:
            shutil.copytree(tmp / "par2", args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
