"""The direct tile-decoding read path agrees with OpenSlide; large thumbnails are read in strips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import her2scope.slide.reader as reader_mod
from her2scope.slide import open_slide
from her2scope.slide.write import write_pyramidal_tiff


@pytest.fixture(scope="module")
def textured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(40, 230, (1300, 1700, 3)).astype(np.uint8), (7, 7), 2)
    return write_pyramidal_tiff(tmp_path_factory.mktemp("fast") / "t.tif", img, 0.25, tile_px=128)


def test_auto_reader_uses_direct_decoding_with_openslide_metadata(textured: Path) -> None:
    fast = open_slide(textured)
    ref = open_slide(textured, reader="openslide")
    assert fast.info.backend == "tifffile" and ref.info.backend == "openslide"
    assert fast.level_dimensions == ref.level_dimensions
    assert fast.level_downsamples == ref.level_downsamples
    assert fast.mpp == ref.mpp == (0.25, 0.25)
    assert fast.info.vendor == ref.info.vendor == "generic-tiff"
    # level 0: the same JPEG decoder family, identical pixels, across tile borders and edges
    for xy, size in [((0, 0), (256, 256)), ((100, 77), (300, 211)), ((1600, 1250), (200, 100))]:
        np.testing.assert_array_equal(fast.read_region(xy, 0, size), ref.read_region(xy, 0, size))
    # beyond the image: white
    out = fast.read_region((1650, 1290), 0, (100, 20))
    assert (out[:, 50:] == 255).all() and (out[10:, :] == 255).all()
    # an aligned level-1 read matches too
    np.testing.assert_array_equal(
        fast.read_region((256, 512), 1, (128, 128)), ref.read_region((256, 512), 1, (128, 128))
    )


def test_thumbnail_of_a_large_level_is_read_in_strips(
    textured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_slide(textured, reader="openslide") as s:
        whole = s.thumbnail(850).astype(int)  # level 1 (850×650) in one piece
        monkeypatch.setattr(reader_mod, "_THUMB_STRIP_PX", 100_000)
        calls: list[tuple[int, int]] = []
        real = s.read_region

        def spy(xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
            calls.append(size)
            return real(xy, level, size)

        s.read_region = spy  # type: ignore[method-assign]
        strips = s.thumbnail(850).astype(int)
    assert strips.shape == whole.shape == (650, 850, 3)
    assert len(calls) == 6 and max(w * h for w, h in calls) <= 100_000 + 850
    np.testing.assert_array_equal(
        strips, whole
    )  # level 1 is the size asked for: strips tile it exactly


@pytest.mark.parametrize("jpeg_rgb", [False, True])
def test_lazy_writer_streams_tiles_with_declared_geometry(tmp_path: Path, jpeg_rgb: bool) -> None:
    import tifffile

    from her2scope.slide.write import write_pyramidal_tiff_lazy

    yy, xx = np.mgrid[0:700, 0:900]
    img = np.stack([xx % 256, yy % 256, (xx + yy) // 8 % 256], axis=2).astype(np.uint8)
    asked: list[tuple[int, int, int, int, int]] = []

    def render(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        asked.append((level, x, y, w, h))
        if level == 0:
            return img[y : y + h, x : x + w]
        return np.full((h, w, 3), 100, np.uint8)

    path = write_pyramidal_tiff_lazy(
        tmp_path / "lazy.tif", (900, 700), 0.5, render, quality=95, jpeg_rgb=jpeg_rgb
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == (2 if jpeg_rgb else 6)  # RGB (Aperio-like) or YCbCr
    with open_slide(path) as s:
        assert s.level_dimensions == ((900, 700), (450, 350)) and s.mpp == (0.5, 0.5)
        assert np.abs(s.read_region((0, 0), 0, (900, 700)).astype(int) - img).mean() < 3
        np.testing.assert_allclose(
            s.read_region((0, 0), 1, (440, 340)), 100, atol=2
        )  # off the padded edge
    assert asked[:2] == [(0, 0, 0, 256, 256), (0, 256, 0, 256, 256)]
    with open_slide(path, reader="openslide") as ref, open_slide(path) as fast:
        np.testing.assert_array_equal(
            fast.read_region((0, 0), 0, (900, 700)), ref.read_region((0, 0), 0, (900, 700))
        )
    assert (0, 768, 512, 132, 188) in asked  # the corner tile is rendered at its true size
    assert len(asked) == 4 * 3 + 2 * 2


def _read_many(seed: int) -> int:
    rng = np.random.default_rng(seed)
    bad = 0
    for _ in range(150):
        x, y = (int(v) for v in rng.integers(0, 1200, 2))
        got = _INHERITED["slide"].read_region((x, y), 0, (96, 96))
        bad += int(not np.array_equal(got, _INHERITED["ref"][y : y + 96, x : x + 96]))
    return bad


_INHERITED: dict = {}


def test_a_slide_opened_before_fork_reads_correctly_in_parallel_children(textured: Path) -> None:
    import multiprocessing as mp

    slide = open_slide(textured)
    assert slide.info.backend == "tifffile"
    with open_slide(textured, reader="openslide") as ref:
        _INHERITED["ref"] = ref.read_region((0, 0), 0, (1700, 1300))
    _INHERITED["slide"] = slide
    try:
        with mp.get_context("fork").Pool(2) as pool:  # children inherit the open slide
            bad = pool.map(_read_many, [1, 2, 3, 4])
    finally:
        _INHERITED.clear()
        slide.close()
    assert bad == [0, 0, 0, 0]
