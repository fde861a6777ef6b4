"""What an uncalibrated scorer that sees only DAB intensity can reach at a weaker assay (issue 11).

An ideal observer, not a model: each patient's membrane DAB is drawn from the synthetic grade model
(:mod:`her2scope.synth.params`: log-normal around ``GRADE_MEDIAN_OD`` with the patient and slide
spreads), a site with assay factor ``a`` shows it multiplied by ``a``, and the observer's class
probabilities are the exact Bayes posterior of the intensity it sees under what it was taught:

- ``trained at A``: the training centre's assay only (a = 1), as a model trained at one centre;
- ``prior over assays``: a log-uniform prior over the assay factor (what assay augmentation aims
  at when it is learnt perfectly).

Patient macro-AUC (one class vs the rest, mean over 1+/2+/3+) is printed per site factor, with
AUC 2+ in brackets. No pixel, no network: the bound says what intensity alone allows, so a model
above it at a weaker site uses something else (membrane completeness, which the assay does not
change), and one below it has room to improve. SYNTHETIC grade model only.

Usage::

    python docs/make_assay_bound.py [--n 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from her2scope.synth import params as P

GRADES = ("1+", "2+", "3+")
SITES = (1.5, 1.0, 0.7, 0.5, 0.4, 0.3, 0.25)
PRIORS = {
    "trained at A (a = 1)": (1.0, 1.0),
    "prior over assays, a in [0.25, 1.5]": (0.25, 1.5),
}


def posterior(r: np.ndarray, mu: np.ndarray, sd: float, lo: float, hi: float) -> np.ndarray:
    """P(grade | log intensity r) with the assay factor log-uniform on [lo, hi] (a point if equal)."""
    shifts = np.log(np.geomspace(lo, hi, 25)) if hi > lo else np.zeros(1)
    lik = np.stack([np.mean([norm.pdf(r, m + d, sd) for d in shifts], axis=0) for m in mu], axis=1)
    return lik / lik.sum(axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="patients per grade (default 20000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    mu = np.log([P.GRADE_MEDIAN_OD[g] for g in GRADES])
    sd = math.hypot(P.SIGMA_PATIENT, P.SIGMA_SLIDE)  # a patient's slide: patient + slide offsets
    y = np.repeat(np.arange(len(GRADES)), args.n)
    base = mu[y] + rng.normal(0.0, sd, y.size)
    medians = {g: round(float(np.exp(m)), 2) for g, m in zip(GRADES, mu, strict=True)}
    print(f"grade medians {medians}, log spread {sd:.3f}")
    print("patient macro-AUC (AUC 2+) at a site whose assay shows a x the training DAB")
    print("| observer | " + " | ".join(f"a = {a:g}" for a in SITES) + " |")
    print("|---|" + "---|" * len(SITES))
    for name, (lo, hi) in PRIORS.items():
        cells = []
        for a in SITES:
            prob = posterior(base + math.log(a), mu, sd, lo, hi)
            aucs = [roc_auc_score(y == k, prob[:, k]) for k in range(len(GRADES))]
            cells.append(f"{np.mean(aucs):.3f} ({aucs[1]:.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
