"""Render an external SYNTHETIC site for docs/generalisation.md: every patient at one centre.

The centre takes the colours ``her2scope.synth`` draws for a third centre from ``SEED`` (hue,
white balance, gamma) and the physics given as ``KEY=VALUE`` (any field of
:class:`her2scope.synth.params.CenterProfile`: ``mpp``, ``dab_scale``, ``membrane_scale``,
``cell_scale``, ``nucleus_scale``, ``h_strength``, ``blur_px``, ``jpeg_quality``); without any, the
hard third centre of ``her2scope synth --centers 3`` (``THIRD_CENTER_PHYSICS``). 18 patients,
labels 1+/2+/3+ balanced. Synthetic data: for measuring the pipeline, never clinical claims.

Usage::

    python docs/make_external_site.py NAME SEED OUT [KEY=VALUE ...]
    python docs/make_external_site.py S2 2 site2 mpp=0.25 dab_scale=0.3 membrane_scale=0.6
"""

from __future__ import annotations

import sys
from dataclasses import replace

from her2scope.synth import cohort
from her2scope.synth import params as P


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    name, seed, out = argv[0], int(argv[1]), argv[2]
    phys: dict[str, float | int] = {}
    for kv in argv[3:]:
        key, _, value = kv.partition("=")
        phys[key] = int(value) if key == "jpeg_quality" else float(value)
    profile = replace(P.center_profiles(3, seed)[2], name=name, **phys)  # type: ignore[arg-type]
    original = P.center_profiles
    P.center_profiles = lambda n, s: [profile]  # one centre: this one
    try:
        cohort.make_cohort(out, n_patients=18, n_centers=1, seed=seed)
    finally:
        P.center_profiles = original
    print(profile)


if __name__ == "__main__":
    main(sys.argv[1:])
