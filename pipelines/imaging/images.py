"""Image files in and out: listing, reading, writing, and checking untrusted downloads.

In memory an image is always a numpy array, HxWx3, uint8, RGB. OpenCV works in BGR, so the
conversion happens here, at the file boundary, and nowhere else.

Two ways in:
- ``read_rgb`` for files this project wrote itself (8-bit RGB PNGs under ``data/``);
- ``check_image`` for anything that came from outside: it refuses what cannot be trusted
  (empty, truncated, corrupt, too small, decompression bombs) with a short stable reason and
  normalises the rest (16-bit, grayscale, alpha, palette, CMYK, EXIF orientation) to 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.core.files import write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Header formats (as Pillow names them) that OpenCV decodes; MPO is a camera JPEG variant.
DECODABLE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP"})

# Refuse larger images from the header alone: 80 Mpx of 8-bit RGB is 240 MB decoded.
MAX_PIXELS = 80_000_000
# Pillow (by default) refuses headers above twice its MAX_IMAGE_PIXELS, so a larger limit
# would never apply.
DECODE_LIMIT = 2 * 89_478_485

# Leading bytes of the formats above, to tell a damaged image from a file of another kind.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")

DEFAULT_JPEG_QUALITY = 95
EXIF_ORIENTATION = 0x0112


class ImageReadError(OSError):
    """A trusted image file could not be read or decoded."""


def list_images(folder: Path | str) -> list[Path]:
    """Image files below ``folder`` (recursive, suffix case-insensitive), sorted.

    Hidden files and folders (``.x.png.tmp`` of an interrupted atomic write, ``.git``) are
    skipped. Entries that are not folders are listed even when they cannot be opened (a
    broken link), so that a check can report them instead of silently losing them.
    """
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(root) / name
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(found)


def read_rgb(path: Path | str) -> np.ndarray:
    """Read an 8-bit image this project wrote as HxWx3 uint8 RGB.

    Not for untrusted files: no size limit, and a 16-bit file would lose its low byte.
    Raises ``ImageReadError`` naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read image: {exc.strerror or exc}") from exc
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageReadError(f"{path}: cannot decode image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_rgb(rgb: np.ndarray) -> None:
    if not (
        isinstance(rgb, np.ndarray)
        and rgb.dtype == np.uint8
        and rgb.ndim == 3
        and rgb.shape[2] == 3
    ):
        kind = getattr(rgb, "dtype", type(rgb))
        shape = getattr(rgb, "shape", "")
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {kind} {shape}")


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG bytes of an HxWx3 uint8 RGB array."""
    _check_rgb(rgb)
    ok, buf = cv2.imencode(
        ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3]
    )
    if not ok:
        raise ValueError("OpenCV could not encode the image as PNG")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """JPEG bytes of an HxWx3 uint8 RGB array; ``quality`` in 1..100."""
    _check_rgb(rgb)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality {quality} is not in 1..100")
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return buf.tobytes()


def write_image(path: Path | str, rgb: np.ndarray, jpeg_quality: int | None = None) -> None:
    """Write ``rgb`` atomically as PNG (``.png``) or JPEG (``.jpg``/``.jpeg``, by suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        if jpeg_quality is not None:
            raise ValueError(f"{path}: jpeg_quality given for a PNG file")
        data = encode_png(rgb)
    elif suffix in (".jpg", ".jpeg"):
        data = encode_jpeg(rgb, DEFAULT_JPEG_QUALITY if jpeg_quality is None else jpeg_quality)
    else:
        raise ValueError(
            f"{path}: cannot choose an encoder for suffix {path.suffix!r} (use .png, .jpg or .jpeg)"
        )
    write_bytes(path, data)


def check_image(
    path: Path | str, min_size: int, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray | None, str]:
    """Decode an untrusted image file into 8-bit RGB, or say why it is refused.

    Returns ``(rgb, "ok")``, ``(rgb, "converted: <what>")`` or ``(None, <reason>)``, where a
    reason is one of: ``empty file``, ``unreadable: ...``, ``not an image``,
    ``unsupported format: ...``, ``too large: WxH pixels``, ``too small: WxH < N``,
    ``truncated``, ``corrupt: ...``, ``unsupported pixel type: ...``.
    Size limits are checked on the header, before any pixel is decoded; ``min_size`` is the
    shortest side allowed (the training crop). Damage inside JPEG entropy-coded data that the
    decoder can resynchronise after (garbled blocks, no missing bytes) is not detectable here.
    """
    path = Path(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return None, "unreadable: is a directory"
        # A fifo or device would block or never end.
        if not stat.S_ISREG(st.st_mode):
            return None, "unreadable: not a regular file"
        if st.st_size == 0:
            return None, "empty file"
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    return check_image_bytes(data, min_size, max_pixels)


def check_image_bytes(
    data: bytes, min_size: int, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray | None, str]:
    """``check_image`` for the bytes of a file."""
    if not data:
        return None, "empty file"
    notes: list[str] = []
    try:
        header = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            return None, "corrupt: unreadable header"
        return None, "not an image"
    except Image.DecompressionBombError:
        return None, f"too large: over {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels"
    except Exception as exc:  # a malformed header can raise almost anything from a parser
        return None, f"corrupt: {_short(exc)}"
    if header.format not in DECODABLE_FORMATS:
        return None, f"unsupported format: {header.format}"
    width, height = header.size
    if width * height > max_pixels:
        return None, f"too large: {width}x{height} pixels"
    if min(width, height) < min_size:
        return None, f"too small: {width}x{height} < {min_size}"
    if header.mode == "CMYK":
        notes.append("CMYK")
    orientation = _exif_orientation(header)

    reason = _integrity(header, data)
    if reason:
        return None, reason
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        # Pillow stops reading at the last pixel row; libpng also wants the closing chunk.
        if header.format == "PNG" and b"IEND" not in data[-64:]:
            return None, "truncated"
        return None, "corrupt: cannot decode"
    rgb, more = _to_rgb8(pixels)
    if rgb is None:
        return None, more[0]
    notes += more
    if orientation != 1:
        rgb = _apply_orientation(rgb, orientation)
        notes.append(f"EXIF orientation {orientation}")
    return rgb, ("converted: " + ", ".join(notes)) if notes else "ok"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:120] if text else type(exc).__name__


def _exif_orientation(header: Image.Image) -> int:
    try:
        value = int(header.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not cost the picture; treat it as upright
        return 1
    return value if 1 <= value <= 8 else 1


def _integrity(header: Image.Image, data: bytes) -> str:
    """Find truncated or corrupt data that OpenCV would accept; "" when none is found.

    OpenCV decodes a truncated JPEG with only a warning on stderr and grey rows at the
    bottom; Pillow raises. For JPEGs a 1/8-scale draft still reads every entropy-coded
    byte, so the check costs a fraction of a full decode. A JPEG cut just before its end
    marker decodes without complaint anywhere, hence the explicit marker check.
    """
    if header.format in ("JPEG", "MPO") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # No end-of-image marker after the last scan: entropy-coded data never holds
        # 0xFFD9 or 0xFFDA, and an EXIF thumbnail's markers come before the main scan.
        return "truncated"
    try:
        if header.format in ("JPEG", "MPO"):
            header.draft(None, (max(1, header.width // 8), max(1, header.height // 8)))
        header.load()
    except Exception as exc:  # decoders report bad data with OSError, SyntaxError, ValueError...
        if "truncated" in str(exc).lower():
            return "truncated"
        return f"corrupt: {_short(exc)}"
    return ""


def _to_rgb8(pixels: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
    """OpenCV's decoded array (any depth, 1/3/4 channels, BGR order) -> 8-bit RGB."""
    notes = []
    if pixels.dtype == np.uint16:
        # Round to nearest: x * 255 / 65535 == x / 257; dropping the low byte would bias dark.
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append("16-bit")
    elif pixels.dtype != np.uint8:
        return None, [f"unsupported pixel type: {pixels.dtype}"]
    if pixels.ndim == 2 or pixels.shape[2] == 1:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB), notes + ["grayscale"]
    if pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), notes
    if pixels.shape[2] == 4:
        rgb = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
        alpha = pixels[:, :, 3:4].astype(np.uint16)
        if alpha.min() == 255:
            return rgb, notes + ["opaque alpha dropped"]
        # Transparent areas become white, as a viewer shows them on a white page.
        blended = (rgb.astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return blended.astype(np.uint8), notes + ["alpha composited on white"]
    return None, [f"unsupported pixel type: {pixels.shape[2]} channels"]


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Turn the stored pixels upright as the EXIF orientation tag (2..8) says."""
    if orientation == 2:
        out = rgb[:, ::-1]
    elif orientation == 3:
        out = rgb[::-1, ::-1]
    elif orientation == 4:
        out = rgb[::-1]
    elif orientation == 5:
        out = rgb.transpose(1, 0, 2)
    elif orientation == 6:
        out = rgb.transpose(1, 0, 2)[:, ::-1]
    elif orientation == 7:
        out = rgb.transpose(1, 0, 2)[::-1, ::-1]
    elif orientation == 8:
        out = rgb.transpose(1, 0, 2)[::-1]
    else:
        out = rgb
    return np.ascontiguousarray(out)


def contact_sheet(
    images: Sequence[np.ndarray], tile: int = 128, columns: int = 6, background: int = 255
) -> np.ndarray:
    """A grid of RGB images, each scaled to fit a ``tile`` square, for a quick look in MLflow."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = np.full((rows * tile, columns * tile, 3), background, np.uint8)
    for i, rgb in enumerate(images):
        _check_rgb(rgb)
        h, w = rgb.shape[:2]
        scale = tile / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        shrink = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        thumb = cv2.resize(rgb, size, interpolation=shrink)
        top = (i // columns) * tile + (tile - size[1]) // 2
        left = (i % columns) * tile + (tile - size[0]) // 2
        sheet[top : top + size[1], left : left + size[0]] = thumb
    return sheet


def to_grayscale(img: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601, as PIL's "L") repeated on three channels: a colorizer's input."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def pixels_sha256(img: np.ndarray) -> str:
    """The digest of an image's shape and pixels: the same pixels give the same digest,
    whatever file or encoding they came from."""
    return hashlib.sha256(repr(img.shape).encode() + img.tobytes()).hexdigest()


def is_gray(img: np.ndarray, tolerance: int = 2) -> bool:
    """True when R, G and B differ nowhere by more than ``tolerance`` levels (a gray photo
    saved as RGB, JPEG chroma noise included)."""
    x = img.astype(np.int16)
    return bool(np.abs(x - x[..., :1]).max() <= tolerance)
