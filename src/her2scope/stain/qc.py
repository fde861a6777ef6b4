"""Measurements that tell whether a slide is hematoxylin + DAB with readable colours (numpy only).

These measure; they do not decide. :mod:`her2scope.scoring.qc` compares the values with the
thresholds of :class:`~her2scope.scoring.qc.QCConfig`.

Frames and units as in :mod:`her2scope.stain.macenko`: RGB uint8 images, optical density (OD)
``-ln((I + 1) / io)``, unit OD stain vectors. Angles are in degrees, lengths in µm.
"""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston 2001 eosin OD vector (as in scikit-image's ``rgb_from_hed``), unit length.
EOSIN_OD = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two OD directions in degrees (0–90: the sign of a direction is ignored)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    c = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(min(1.0, c))))


def background_chroma(thumbnail: np.ndarray, quantile: float = 0.95) -> tuple[float, list[int]]:
    """Colour of the glass: the median RGB of the brightest pixels and its chroma (max − min).

    Brightest = luminance (mean of R, G, B) at or above its ``quantile``. Glass scanned with a
    white balance is grey (chroma of a few units); a JPEG YCbCr frame read as RGB puts glass at
    about (245, 128, 128), chroma above 100.
    """
    px = np.asarray(thumbnail).reshape(-1, 3)
    lum = px.astype(np.float32).mean(axis=1)
    bright = px[lum >= np.quantile(lum, quantile)]
    colour = np.median(bright, axis=0)
    return float(colour.max() - colour.min()), [round(float(v)) for v in colour]


#: A tissue pixel whose OD vector lies more than this outside the fitted H–DAB plane is not a
#: mix of the two stains. Synthetic centres (gamma, JPEG, blur) and real Ki67/FHL2 IHC keep every
#: pixel within it; eosin lies 43° outside the reference plane.
OFF_PLANE_DEG = 15.0


def off_plane_share(
    images: list[np.ndarray],
    stain_matrix: np.ndarray,
    io: float = 240.0,
    beta: float = 0.15,
    off_plane_deg: float = OFF_PLANE_DEG,
) -> float | None:
    """Share of tissue pixels whose colour is not a mix of the two fitted stains.

    Tissue: pixels with OD ≥ ``beta`` in every channel (as the stain fit). A pixel is off-plane
    when its OD vector lies more than ``off_plane_deg`` outside the plane of ``stain_matrix``
    (rows H, DAB). A third stain (eosin in an H&E slide that the fit took as hematoxylin only)
    makes a large share; scanner gamma and JPEG noise do not. None without tissue.
    """
    from her2scope.stain.macenko import colour_counts, od_lut

    lut = od_lut(io)
    px = np.concatenate([np.asarray(a).reshape(-1, 3) for a in images])
    colours, counts = colour_counts(px)  # per distinct colour: the same share, far fewer rows
    od = lut[colours]
    tissue = (od >= beta).all(axis=1)
    od, counts = od[tissue], counts[tissue]
    if len(od) == 0:
        return None
    q, _ = np.linalg.qr(np.asarray(stain_matrix, np.float64).T)  # orthonormal basis of the plane
    sin_off = np.linalg.norm(od - (od @ q) @ q.T, axis=1) / np.linalg.norm(od, axis=1)
    off = sin_off > np.sin(np.radians(off_plane_deg))
    return float(counts[off].sum() / counts.sum())
