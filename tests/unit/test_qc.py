"""QC gates: stain identity, neutral background, resolution, tile count, stain fit; the DICOM fix."""

from __future__ import annotations

import numpy as np
import pytest

from her2scope.errors import ConfigError
from her2scope.scoring.qc import (
    QCConfig,
    check_background,
    check_resolution,
    check_stain_fit,
    check_stain_identity,
    check_third_stain,
    check_tiles,
    reasons,
)
from her2scope.stain import StainNormalizer
from her2scope.stain.qc import EOSIN_OD, angle_deg, background_chroma, off_plane_share
from tests.stain_images import DAB_OD
from tests.stain_images import render_cells as _render


def _fit(img: np.ndarray) -> StainNormalizer:
    return StainNormalizer("preserve_dab").fit(img)


def test_config_defaults_are_valid_and_bad_values_are_named() -> None:
    QCConfig()
    with pytest.raises(ConfigError, match="min_tiles=0"):
        QCConfig(min_tiles=0)
    with pytest.raises(ConfigError, match="max_mpp_rel_diff=1.5"):
        QCConfig(max_mpp_rel_diff=1.5)
    with pytest.raises(ConfigError, match="max_dab_angle_deg=0"):
        QCConfig(max_dab_angle_deg=0)


def test_angle_ignores_sign_and_length() -> None:
    assert angle_deg(np.array([1.0, 0, 0]), np.array([-3.0, 0, 0])) == pytest.approx(0.0)
    assert angle_deg(np.array([1.0, 0, 0]), np.array([0, 2.0, 0])) == pytest.approx(90.0)


def _stain_checks(img: np.ndarray, cfg: QCConfig) -> list:
    fit = _fit(img)
    checks = check_stain_identity(fit.stain_matrix, fit.reason, cfg)
    off = None if fit.stain_matrix is None else off_plane_share([img], fit.stain_matrix)
    return [*checks, check_third_stain(off, cfg)]


def test_ihc_passes_and_h_and_e_is_refused() -> None:
    cfg = QCConfig()
    ok = _stain_checks(_render(DAB_OD), cfg)
    assert [c.passed for c in ok] == [True] * 4, reasons(ok)
    assert ok[1].value < 10.0  # the DAB of the render is the Ruifrok DAB
    assert ok[3].value < cfg.max_off_plane_share / 2
    # the stain fit takes this H&E as hematoxylin-only (DAB from the reference): the angles pass,
    # the eosin left outside the H-DAB plane does not
    bad = _stain_checks(_render(EOSIN_OD), cfg)
    assert [c.check for c in bad if not c.passed] == ["stain_third_stain"]
    assert bad[3].value > 1.2 * cfg.max_off_plane_share
    assert "eosin" in reasons(bad)[0]


def test_eosin_fitted_as_the_second_stain_is_refused_by_the_angles() -> None:
    ref_h = np.array([0.672714, 0.649657, 0.35412])
    eosin_as_dab = np.stack([ref_h, EOSIN_OD])
    checks = check_stain_identity(eosin_as_dab, "", QCConfig())
    assert [c.passed for c in checks] == [True, False, False]
    assert checks[2].value < 0  # closer to eosin than to DAB


def test_no_stain_fit_fails_all_identity_checks_with_the_reason() -> None:
    checks = check_stain_identity(None, "too little tissue", QCConfig())
    assert [c.passed for c in checks] == [False, False, False]
    assert all(c.value is None and "too little tissue" in c.detail for c in checks)


def test_background_gate_catches_ycbcr_read_as_rgb() -> None:
    from PIL import Image

    rgb = _render(DAB_OD)
    ok = check_background(rgb, QCConfig())
    assert ok.passed and ok.value < 15
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    bad = check_background(ycc, QCConfig())
    assert not bad.passed and bad.value > 100
    assert "YCbCr" in bad.detail
    _, colour = background_chroma(ycc)
    assert colour[1] == pytest.approx(128, abs=3) and colour[2] == pytest.approx(128, abs=3)


def test_ycbcr_to_rgb_inverts_jfif_conversion() -> None:
    from PIL import Image

    from her2scope.slide.reader import ycbcr_to_rgb

    rgb = _render(DAB_OD, seed=3)
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    back = ycbcr_to_rgb(ycc)
    assert np.abs(ycc.astype(int) - rgb.astype(int)).max() > 50  # the read-as-RGB error
    diff = np.abs(back.astype(int) - rgb.astype(int))
    assert diff.max() <= 3 and diff.mean() < 1.5  # two 8-bit roundings


def _fake_dicom(tmp_path, photometric: bytes, frame_app: bytes) -> object:
    value = photometric + (b" " if len(photometric) % 2 else b"")
    head = (
        b"\x00" * 128
        + b"DICM"
        + b"\x02\x00\x10\x00UI\x16\x001.2.840.10008.1.2.4.50"
        + b"\x28\x00\x04\x00CS"
        + len(value).to_bytes(2, "little")
        + value
        + b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\x00\xe0\x40\x00\x00\x00"
        + b"\xff\xd8"
        + frame_app
    )
    path = tmp_path / "f.dcm"
    path.write_bytes(head)
    return path


def test_dicom_jfif_frames_under_an_rgb_header_are_detected(tmp_path) -> None:
    from her2scope.slide.reader import dicom_jfif_declared_rgb

    jfif = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    adobe = b"\xff\xee\x00\x0eAdobe\x00e\x00\x00\x00\x00\x00"
    assert dicom_jfif_declared_rgb(_fake_dicom(tmp_path, b"RGB", jfif))
    assert not dicom_jfif_declared_rgb(_fake_dicom(tmp_path, b"RGB", adobe))
    assert not dicom_jfif_declared_rgb(_fake_dicom(tmp_path, b"YBR_FULL_422", jfif))


def test_resolution_gate_has_a_tolerance_and_names_the_fix() -> None:
    cfg = QCConfig()
    assert check_resolution(0.5, 0.5, cfg).passed
    assert check_resolution(0.52, 0.5, cfg).passed
    bad = check_resolution(1.0, 0.5, cfg)
    assert not bad.passed and bad.value == pytest.approx(1.0)
    assert "0.5 µm/px" in bad.detail and "target_mpp" in bad.detail
    unknown = check_resolution(0.5, None, cfg)
    assert not unknown.passed and "does not record" in unknown.detail


def test_tile_count_and_stain_fit_gates() -> None:
    cfg = QCConfig(min_tiles=8)
    assert not check_tiles(1, cfg).passed and check_tiles(8, cfg).passed
    assert check_stain_fit(None, "", cfg).passed  # run without normalisation
    assert check_stain_fit(0.0, "", cfg).passed
    bad = check_stain_fit(1.0, "too little tissue", cfg)
    assert not bad.passed and "too little tissue" in bad.detail


def test_check_serialises_to_the_documented_keys() -> None:
    d = check_tiles(3, QCConfig()).to_dict()
    assert set(d) == {"check", "value", "threshold", "passed", "detail"}
    assert d["check"] == "tumour_tiles" and d["value"] == 3.0 and d["passed"] is False


def test_a_scan_coarser_than_training_is_refused_even_when_tiles_match() -> None:
    from her2scope.scoring.qc import check_scan_resolution

    cfg = QCConfig()
    assert check_scan_resolution(0.25, 0.5, cfg).passed  # 40x scan for a 20x run: fine
    assert check_scan_resolution(0.5, 1.0, cfg).passed
    bad = check_scan_resolution(1.0, 0.5, cfg)  # 10x scan tiled up to 0.5 µm/px
    assert not bad.passed and bad.value == pytest.approx(1.0) and "upsampled" in bad.detail
