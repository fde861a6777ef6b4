"""Open whole-slide images and plain images behind one small, typed interface.

Coordinates are level-0 pixels with the origin at the top-left; sizes are ``(width, height)``.
Pixels come back as ``H×W×3`` RGB ``uint8`` numpy arrays; transparent areas (outside the scanned
region of an MRXS, say) are composited over white, never black.

Backends, tried in this order by ``reader="auto"``:

- ``openslide``: SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM-WSI (from the ``openslide-bin`` wheel);
  for generic tiled TIFF and Aperio SVS whose pyramid tifffile sees identically, pixels are then
  read by decoding the file's tiles directly with tifffile (backend ``"tifffile"``; OpenSlide's
  geometry and metadata are kept; level-0 pixels identical; 2-5× faster);
- ``tiffslide``: TIFFs OpenSlide refuses (plain or tiled RGB TIFFs);
- ``image``: PNG/JPEG/TIFF patches and ROI crops, opened as a one-level slide.

µm/px comes from the file; where the file has none (or only a placeholder such as 72 dpi), from the
``mpp`` argument (the manifest's ``mpp`` column or ``--mpp``); otherwise :class:`SlideError` tells
the user how to supply it. A value is never assumed.

Every failure a user can cause (not a slide, truncated, unknown format, not brightfield RGB) is a
:class:`~her2scope.errors.SlideError` carrying the path and the reason.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from her2scope.errors import SlideError

ReaderName = Literal["auto", "openslide", "tiffslide", "image"]

#: µm/px values outside this range are treated as placeholders (72/96 dpi defaults) and ignored.
PLAUSIBLE_MPP = (0.02, 50.0)

#: Largest level area (px) a thumbnail reads in one piece; larger levels are read in strips.
_THUMB_STRIP_PX = 32 * 2**20

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".qptiff", ".btf", ".ome.tif", ".ome.tiff"}


class _Backend(Protocol):
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def read_rgba(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SlideInfo:
    """What is known about a slide without reading pixels."""

    path: str
    backend: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float
    mpp_y: float
    mpp_source: Literal["file", "given"]
    objective_power: float | None
    vendor: str | None


class Slide:
    """An open slide. Use as a context manager, or call :meth:`close`.

    Not safe to share across processes: open one per worker (``open_slide`` is cheap).
    """

    def __init__(self, backend: _Backend, info: SlideInfo) -> None:
        self._backend = backend
        self.info = info

    # --- geometry -------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.info.path

    @property
    def level_count(self) -> int:
        return len(self.info.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self.info.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.info.level_downsamples

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in pixels."""
        return self.info.level_dimensions[0]

    @property
    def mpp(self) -> tuple[float, float]:
        """Level-0 µm/px as ``(x, y)``."""
        return (self.info.mpp_x, self.info.mpp_y)

    @property
    def objective_power(self) -> float | None:
        return self.info.objective_power

    def best_level_for_downsample(self, downsample: float) -> int:
        """The deepest level whose downsample does not exceed ``downsample`` (never upsamples)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = i
        return best

    # --- pixels ---------------------------------------------------------------------------
    def read_region(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size = (w, h)`` pixels of ``level`` whose top-left is ``level0_xy`` (level-0 px).

        Returns ``h×w×3`` uint8 RGB; transparent or out-of-slide pixels are white.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(
                self.path, f"level {level} does not exist (slide has {self.level_count})"
            )
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        try:
            rgba = self._backend.read_rgba((int(level0_xy[0]), int(level0_xy[1])), level, (w, h))
        except SlideError:
            raise
        except Exception as exc:  # a decode error deep inside a library
            from her2scope.errors import reason_of

            why = reason_of(exc, "the file is damaged there")
            raise SlideError(
                self.path, f"cannot read region at {level0_xy} level {level}: {why}"
            ) from exc
        return composite_over_white(rgba)

    def read_tile(
        self, level0_xy: tuple[int, int], level: int, read_px: int, out_px: int
    ) -> np.ndarray:
        """Read a square of ``read_px`` pixels at ``level`` and resize it to ``out_px`` (area filter)."""
        tile = self.read_region(level0_xy, level, (read_px, read_px))
        if read_px != out_px:
            import cv2

            interp = cv2.INTER_AREA if read_px > out_px else cv2.INTER_LINEAR
            tile = cv2.resize(tile, (out_px, out_px), interpolation=interp)
        return tile

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """The whole slide, downsampled so its longer side is at most ``max_px``; RGB uint8.

        Reads from the smallest pyramid level that is still at least that large.
        """
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_px
        if scale <= 1:
            return self.read_region((0, 0), 0, (w0, h0))
        level = self.best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        import cv2

        out_w = max(1, round(w0 / scale))
        out_h = max(1, round(h0 / scale))
        if lw * lh <= _THUMB_STRIP_PX:
            img = self.read_region((0, 0), level, (lw, lh))
            return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
        # a large level (a slide without a pyramid): read it in strips to bound memory
        out = np.empty((out_h, out_w, 3), np.uint8)
        rows = max(1, int(_THUMB_STRIP_PX / lw / (lh / out_h)))  # output rows per strip
        ds = self.level_downsamples[level]
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            y0, y1 = round(r0 * lh / out_h), max(round(r1 * lh / out_h), round(r0 * lh / out_h) + 1)
            strip = self.read_region((0, round(y0 * ds)), level, (lw, y1 - y0))
            out[r0:r1] = cv2.resize(strip, (out_w, r1 - r0), interpolation=cv2.INTER_AREA)
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"Slide('{self.path}', {w}×{h}, levels={self.level_count}, "
            f"mpp=({self.info.mpp_x:.4g}, {self.info.mpp_y:.4g}), backend={self.info.backend})"
        )


def composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (straight alpha) → RGB over a white background; RGB passes through."""
    if rgba.ndim != 3:
        raise ValueError(f"expected an H×W×C array, got shape {rgba.shape}")
    if rgba.shape[2] == 3:
        return np.ascontiguousarray(rgba, dtype=np.uint8)
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[..., None]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


class _OpenSlideBackend:
    def __init__(self, path: Path) -> None:
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        props = self._slide.properties
        self.mpp = (_float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y")))
        self.objective_power = _float(props.get("openslide.objective-power"))
        self.vendor = props.get("openslide.vendor")
        # OpenSlide trusts a DICOM header's "RGB" even when the JPEG frames are JFIF (YCbCr)
        self.ycbcr_frames = self.vendor == "dicom" and dicom_jfif_declared_rgb(path)

    def read_rgba(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        rgba = np.asarray(self._slide.read_region(level0_xy, level, size))
        if self.ycbcr_frames:
            rgba = rgba.copy()
            rgba[..., :3] = ycbcr_to_rgb(rgba[..., :3])
        return rgba

    def close(self) -> None:
        self._slide.close()


class _TiffSlideBackend:
    """tiffslide for geometry and metadata; pixels of tiled pages decoded directly (faster)."""

    def __init__(self, path: Path, check_rgb: bool = True) -> None:
        if check_rgb:
            _check_tiff_is_rgb(path)
        import tiffslide

        self._slide = tiffslide.TiffSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        props = self._slide.properties
        self.mpp = (_float(props.get("tiffslide.mpp-x")), _float(props.get("tiffslide.mpp-y")))
        self.objective_power = _float(props.get("tiffslide.objective-power"))
        self.vendor = props.get("tiffslide.vendor")
        self._tiles = _TiledTiff.open(path, self.level_dimensions)

    def read_rgba(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        if self._tiles is not None:
            ds = self.level_downsamples[level]
            x = math.floor(level0_xy[0] / ds + 0.5)
            y = math.floor(level0_xy[1] / ds + 0.5)
            return self._tiles.read(level, x, y, size[0], size[1])
        arr = self._slide.read_region(level0_xy, level, size, as_array=True)
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return arr

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._slide.close()


class _TiledTiff:
    """Reads regions of tiled RGB TIFF pages by decoding only the tiles they touch.

    Decoded tiles are kept in a small LRU cache (``cache_bytes``), so neighbouring reads that
    share a file tile decode it once. Pixels beyond the image are white.
    """

    def __init__(self, tif: Any, pages: list[Any], cache_bytes: int) -> None:
        self._tif = tif
        self._pages = pages
        # pread on our own descriptor: no shared file offset, so a Slide used after fork()
        # (e.g. by DataLoader workers) cannot race another process's seek
        self._fd = os.open(tif.filehandle.path, os.O_RDONLY) if hasattr(os, "pread") else None
        # tifffile loads some tag values lazily through its shared handle: load them now
        self._offsets = [np.asarray(pg.dataoffsets, np.int64) for pg in pages]
        self._counts = [np.asarray(pg.databytecounts, np.int64) for pg in pages]
        self._tables = [pg.jpegtables for pg in pages]
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._cache_bytes = cache_bytes
        self._cached = 0

    @classmethod
    def open(
        cls,
        path: Path,
        level_dimensions: tuple[tuple[int, int], ...],
        cache_bytes: int = 48 * 2**20,
    ) -> _TiledTiff | None:
        """None when a level is not a plain tiled 8-bit RGB page matching ``level_dimensions``."""
        import tifffile

        try:
            tif = tifffile.TiffFile(str(path))
        except Exception:
            return None
        try:
            levels = tif.series[0].levels
            pages = [lvl.keyframe for lvl in levels]
            ok = len(pages) == len(level_dimensions) and all(
                getattr(pg, "is_tiled", False)
                and pg.samplesperpixel == 3
                and pg.dtype == np.uint8
                and int(pg.planarconfig) == 1
                and pg.imagedepth == 1
                and (pg.imagewidth, pg.imagelength) == tuple(dims)
                for pg, dims in zip(pages, level_dimensions, strict=False)
            )
        except Exception:
            ok = False
        if not ok:
            tif.close()
            return None
        return cls(tif, pages, cache_bytes)

    def _tile(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        hit = self._cache.pop(key, None)
        if hit is not None:
            self._cache[key] = hit  # most recent last
            return hit
        page = self._pages[level]
        offset, count = int(self._offsets[level][index]), int(self._counts[level][index])
        if count == 0:  # a sparse tile: empty
            tile = np.full((page.tilelength, page.tilewidth, 3), 255, np.uint8)
        else:
            if self._fd is not None:
                data = os.pread(self._fd, count, offset)
            else:  # pragma: no cover - Windows
                fh = self._tif.filehandle
                fh.seek(offset)
                data = fh.read(count)
            seg = page.decode(data, index, jpegtables=self._tables[level])[0]
            if seg is None:
                raise ValueError(f"tile {index} of level {level} could not be decoded")
            tile = np.asarray(seg).reshape(page.tilelength, page.tilewidth, -1)[..., :3]
        self._cache[key] = tile
        self._cached += tile.nbytes
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            old = self._cache.pop(next(iter(self._cache)))
            self._cached -= old.nbytes
        return tile

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``h×w×3`` RGB of ``level`` with top-left ``(x, y)`` in that level's pixels."""
        page = self._pages[level]
        W, H = page.imagewidth, page.imagelength
        tw, th = page.tilewidth, page.tilelength
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        inside = (x0, y0, x1, y1) == (x, y, x + w, y + h)
        out = np.empty((h, w, 3), np.uint8) if inside else np.full((h, w, 3), 255, np.uint8)
        if x1 <= x0 or y1 <= y0:
            return out
        across = -(-W // tw)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._tile(level, ty * across + tx)
                # the part of this tile inside both the request and the image
                ax0, ay0 = max(x0, tx * tw), max(y0, ty * th)
                ax1, ay1 = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = tile[
                    ay0 - ty * th : ay1 - ty * th, ax0 - tx * tw : ax1 - tx * tw
                ]
        return out

    def close(self) -> None:
        self._cache.clear()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._tif.close()


class _ImageBackend:
    """A plain image (PNG/JPEG/TIFF patch) as a one-level slide. Decompression limits stay on."""

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix in {".tif", ".tiff"}:
            _check_tiff_is_rgb(path)
            import tifffile

            arr = tifffile.imread(str(path), series=0, level=0)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()  # may raise DecompressionBombError: limits are kept on deliberately
                if im.mode in {"L", "LA", "1"}:
                    raise SlideError(path, GRAYSCALE_REASON)
                if im.mode not in {"RGB", "RGBA", "P"}:
                    raise SlideError(path, f"image mode {im.mode} is not brightfield RGB")
                im = im.convert("RGBA" if im.mode in {"RGBA", "LA", "P"} else "RGB")
                arr = np.asarray(im)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise SlideError(
                path, f"image of shape {arr.shape} and type {arr.dtype} is not 8-bit RGB"
            )
        self._arr = arr
        h, w = arr.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.mpp = (None, None)
        self.objective_power = None
        self.vendor = "image"

    def read_rgba(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        x, y = level0_xy
        w, h = size
        H, W = self._arr.shape[:2]
        c = self._arr.shape[2]
        out = np.zeros((h, w, 4), np.uint8)  # transparent: composited to white
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            patch = self._arr[y0:y1, x0:x1]
            out[y0 - y : y1 - y, x0 - x : x1 - x, :3] = patch[..., :3]
            out[y0 - y : y1 - y, x0 - x : x1 - x, 3] = patch[..., 3] if c == 4 else 255
        return out

    def close(self) -> None:
        self._arr = np.zeros((0, 0, 3), np.uint8)


#: DICOM transfer syntaxes of baseline / extended JPEG frames.
_DICOM_JPEG_SYNTAXES = (b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.4.51")


def dicom_jfif_declared_rgb(path: Path, head_bytes: int = 1 << 20) -> bool:
    """True when a DICOM file declares RGB pixels but its first JPEG frame is JFIF (YCbCr).

    JFIF mandates YCbCr; a header saying ``PhotometricInterpretation = RGB`` over JFIF frames is
    a known export bug, and OpenSlide 4 then returns the YCbCr samples as RGB (glass at about
    (245, 128, 128)). Frames with an Adobe marker (which states the colour transform) are
    trusted. Reads only the first ``head_bytes`` of the file; False on anything unexpected.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(head_bytes)
    except OSError:
        return False
    # (0028,0004) Photometric Interpretation, explicit VR little endian: tag, "CS", length, value
    i = head.find(b"\x28\x00\x04\x00CS")
    if i < 0 or not any(s in head for s in _DICOM_JPEG_SYNTAXES):
        return False
    n = int.from_bytes(head[i + 6 : i + 8], "little")
    if head[i + 8 : i + 8 + n].strip(b" \x00") != b"RGB":
        return False
    pixel_data = head.find(b"\xe0\x7f\x10\x00")  # (7FE0,0010)
    soi = head.find(b"\xff\xd8\xff", max(pixel_data, 0))
    if pixel_data < 0 or soi < 0:
        return False
    frame_head = head[soi : soi + 64]
    return b"JFIF\x00" in frame_head and b"Adobe" not in frame_head


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """JPEG (JFIF, full-range ITU-R BT.601) YCbCr uint8 → RGB uint8, rounded and clipped."""
    f = ycc.astype(np.float32)
    y, cb, cr = f[..., 0], f[..., 1] - 128.0, f[..., 2] - 128.0
    rgb = np.stack((y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb), axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


#: Why a grayscale image is refused: the same words from every reader (PNG/JPEG, TIFF, WSI).
GRAYSCALE_REASON = (
    "a grayscale (single-channel) image; HER2 IHC is scored from colour (brown DAB against blue "
    "hematoxylin), which a grayscale image has lost: give the RGB scan of the slide"
)


def _refuse_grayscale_tiff(path: Path) -> None:
    """Raise ``SlideError(GRAYSCALE_REASON)`` for an 8-bit single-channel TIFF, whatever reader
    would open it (OpenSlide opens tiled grayscale TIFFs); silent when unsure."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            page = series.pages[0] if series.pages else tif.pages[0]
            gray = (
                series.dtype == np.uint8
                and int(getattr(page, "samplesperpixel", 3)) in (1, 2)  # 2: grey + alpha
                and int(getattr(page, "photometric", 2)) in (0, 1)  # min-is-white / -black
                and set(series.axes) <= set("YXS")
            )
    except Exception:
        return
    if gray:
        raise SlideError(path, GRAYSCALE_REASON)


def _check_tiff_is_rgb(path: Path) -> None:
    """Refuse TIFFs that are not 8-bit brightfield RGB (fluorescence, multiplex, 16-bit)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            page = series.pages[0] if series.pages else tif.pages[0]
            photometric = int(getattr(page, "photometric", 0))
            spp = int(getattr(page, "samplesperpixel", 1))
            dtype = series.dtype
            axes = series.axes
            compression = int(getattr(page, "compression", 1))
    except SlideError:
        raise
    except Exception as exc:
        from her2scope.errors import reason_of

        why = reason_of(exc, "damaged, truncated or not a TIFF")
        raise SlideError(path, f"not a readable TIFF ({why})") from None
    # photometric: 2 = RGB, 6 = YCbCr; JPEG-compressed RGB may also report 6
    if dtype != np.uint8 or spp not in (3, 4) or photometric not in (2, 6) or "C" in axes:
        raise SlideError(
            path,
            f"not a brightfield RGB image (axes {axes}, {spp} sample(s)/px, {dtype}, photometric "
            f"{photometric}); fluorescence and multiplex images are not supported",
        )
    try:
        import imagecodecs  # noqa: F401  (tifffile's codecs)
        from tifffile import COMPRESSION

        COMPRESSION(compression)
    except ValueError:
        raise SlideError(path, f"unsupported TIFF compression {compression}") from None


def _probe_openslide(path: Path) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_slide(path: str | Path, mpp: float | None = None, reader: ReaderName = "auto") -> Slide:
    """Open a slide or plain image.

    ``mpp`` (µm/px at level 0) is used only when the file has none; it is required then.
    Raises :class:`SlideError` naming the path and the reason on any unreadable input.
    """
    path = _slide_file(Path(path))
    backend, name = _open_backend(path, reader)
    try:
        (mx, my), mpp_source = _level0_mpp(path, backend.mpp, mpp)
    except SlideError:
        backend.close()
        raise
    info = SlideInfo(
        path=str(path),
        backend=name,
        level_dimensions=backend.level_dimensions,
        level_downsamples=backend.level_downsamples,
        mpp_x=mx,
        mpp_y=my,
        mpp_source=mpp_source,
        objective_power=backend.objective_power,
        vendor=backend.vendor,
    )
    return Slide(backend, info)


def _slide_file(path: Path) -> Path:
    """The file to open for ``path`` (a DICOM-WSI folder: its first ``.dcm``); refuses missing,
    empty and grayscale files."""
    if not path.exists():
        raise SlideError(path, "file not found")
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        # a DICOM-WSI folder: open any of its files
        dcms = sorted(path.glob("*.dcm"))
        if not dcms:
            raise SlideError(
                path, "is a folder; give a slide file (or a folder of DICOM-WSI .dcm files)"
            )
        path = dcms[0]
    if path.stat().st_size == 0:
        raise SlideError(path, "file is empty")
    if _is_tiff(path):
        _refuse_grayscale_tiff(path)
    return path


def _open_backend(path: Path, reader: ReaderName) -> tuple[Any, str]:
    """The first backend (in the module docstring's order) that opens ``path``, and its name."""
    backend: Any = None
    name: str = reader
    errors: list[str] = []
    if reader in ("auto", "openslide"):
        fmt = _probe_openslide(path)
        if fmt is not None or reader == "openslide":
            try:
                backend = _OpenSlideBackend(path)
                name = "openslide"
            except Exception as exc:
                errors.append(f"OpenSlide: {_clean(exc)}")
            if backend is not None and reader == "auto" and fmt in _FAST_FORMATS:
                fast = _fast_twin(path, backend)
                if fast is not None:
                    backend.close()
                    backend, name = fast, "tifffile"
        elif reader == "auto":
            errors.append("OpenSlide: format not recognised")
    if backend is None and reader in ("auto", "tiffslide") and _is_tiff(path):
        try:
            backend = _TiffSlideBackend(path)
            name = "tiffslide"
        except SlideError as exc:
            if reader == "auto":
                raise
            errors.append(exc.reason)
        except Exception as exc:
            errors.append(f"tiffslide: {_clean(exc)}")
    if (
        backend is None
        and reader in ("auto", "image")
        and (path.suffix.lower() in _IMAGE_SUFFIXES or (reader == "image" and _is_tiff(path)))
    ):
        try:
            backend = _ImageBackend(path)
            name = "image"
        except SlideError:
            raise
        except Exception as exc:
            errors.append(f"image: {_clean(exc)}")
    if backend is None:
        if not errors:
            errors.append(
                f"unknown format (suffix '{path.suffix}'); expected a whole-slide image "
                "(SVS, NDPI, MRXS, SCN, TIFF, DICOM) or a PNG/JPEG/TIFF image"
            )
        raise SlideError(path, "cannot open: " + "; ".join(errors))
    return backend, name


def _level0_mpp(
    path: Path, file_mpp: tuple[float | None, float | None], given: float | None
) -> tuple[tuple[float, float], Literal["file", "given"]]:
    """Level-0 ``(x, y)`` µm/px: the file's when plausible, else ``given`` (required then)."""
    mx, my = file_mpp
    if mx is not None and my is None:
        my = mx
    if mx is not None and my is not None and PLAUSIBLE_MPP[0] <= mx <= PLAUSIBLE_MPP[1]:
        return (float(mx), float(my)), "file"
    if given is None:
        what = (
            f"µm/px in the file ({mx:.4g}) is a placeholder resolution, not a microscope's"
            if mx is not None
            else "no µm/px in the file"
        )
        raise SlideError(
            path,
            f"{what}; add an 'mpp' column to the manifest or pass --mpp (µm per pixel at level 0)",
        )
    if not (PLAUSIBLE_MPP[0] <= given <= PLAUSIBLE_MPP[1]):
        raise SlideError(
            path, f"given µm/px {given} is outside the plausible range {PLAUSIBLE_MPP}"
        )
    return (float(given), float(given)), "given"


#: OpenSlide formats whose pixels are read by decoding the TIFF tiles directly when the geometry
#: agrees (about 2-3× faster than OpenSlide's read_region; same JPEG decoder family).
_FAST_FORMATS = {"generic-tiff", "aperio"}


def _fast_twin(path: Path, osr: _OpenSlideBackend) -> _DirectTiffBackend | None:
    """A direct-decoding reader with OpenSlide's geometry and metadata, or None if they differ."""
    tiles = _TiledTiff.open(path, osr.level_dimensions)
    if tiles is None:
        return None
    return _DirectTiffBackend(tiles, osr)


class _DirectTiffBackend:
    """Pixels decoded straight from the TIFF's tiles; geometry and metadata from OpenSlide."""

    def __init__(self, tiles: _TiledTiff, osr: _OpenSlideBackend) -> None:
        self._tiles = tiles
        self.level_dimensions = osr.level_dimensions
        self.level_downsamples = osr.level_downsamples
        self.mpp = osr.mpp
        self.objective_power = osr.objective_power
        self.vendor = osr.vendor

    def read_rgba(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        ds = self.level_downsamples[level]
        # nearest level pixel (OpenSlide interpolates sub-pixel offsets; tiles are aligned)
        x = math.floor(level0_xy[0] / ds + 0.5)
        y = math.floor(level0_xy[1] / ds + 0.5)
        return self._tiles.read(level, x, y, size[0], size[1])

    def close(self) -> None:
        self._tiles.close()


def _clean(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    return msg.splitlines()[0][:300]
