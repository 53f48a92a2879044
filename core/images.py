"""Images on the host, the one definition every layer uses: decode, colour conversion, resize.

The host side does only what a graph cannot do cheaply and identically everywhere: decode a file
(or take a camera frame), convert its colour, and bring it to the model's size as uint8
[H, W, C]. Everything numeric (cast, scale, normalize, layout) happens inside the model
(training.preprocess.Preprocess, which export puts in the graph), so training-time and exported
scores cannot drift. Registration, when a model uses it, runs between decode and the model
(core.prepare). Torch-free: the edge runtime imports it.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# The one list of image extensions: training folders, export.check --images, TensorRT INT8
# calibration data, batch inspection and calibration all read exactly these.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                              ".pgm", ".ppm", ".pnm", ".pbm", ".jp2"})
DEFAULT_MAX_PIXELS = 40_000_000


def is_image_name(path: str | Path) -> bool:
    """Whether a file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""


def open_regular(path: Path) -> int:
    """A descriptor of a regular file, opened for reading. Opened non-blocking and checked on the
    open descriptor: a FIFO or a device put where an image was listed would otherwise block the
    reading thread for ever (and with it the run and its Ctrl-C), and a check by path before
    opening could be raced. OSError (EINVAL "not a regular file") otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if hasattr(os, "O_NONBLOCK"):  # regular files never block; reads are plain from here
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path) -> np.ndarray:
    """A regular file's bytes (open_regular: a FIFO or a device is refused, never waited on)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8)


def decode_file(path: str | Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file as stored (any depth and channel count, OpenCV's BGR order).

    Raises ImageError naming the file for unreadable, zero-byte, corrupt or non-image files, and
    for headers OpenCV refuses to allocate (it raises cv2.error, e.g. a PNG claiming 100000^2 pixels).
    """
    p = Path(path)
    try:
        data = read_regular(p)
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror or e})") from e
    if data.size == 0:
        raise ImageError(f"{p}: empty file (0 bytes)")
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as e:
        raise ImageError(f"{p}: OpenCV refuses to decode it ({getattr(e, 'err', '') or str(e).strip()[:200]})") from e
    if img is None:
        raise ImageError(f"{p}: not a decodable image (corrupt, truncated or not an image)")
    return img


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Decode an image file to uint8 [H, W, C] with C = channels (1 gray, 3 RGB).

    16-bit images are scaled to 8 bit, RGBA drops alpha, gray is replicated to RGB when asked.
    Raises ImageError naming the file for zero-byte, corrupt or non-image files.
    """
    return to_uint8_channels(decode_file(path), channels, source=str(path))


def to_uint8_channels(img: np.ndarray, channels: int, source: str = "image") -> np.ndarray:
    """Bring a decoded OpenCV image (BGR order, any depth) to uint8 [H, W, channels] (RGB/gray)."""
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{source}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ImageError(f"{source}: unsupported image shape {img.shape}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ImageError(f"{source}: image too small ({img.shape[1]}x{img.shape[0]})")
    c = img.shape[2]
    if channels == 1:
        if c == 1:
            return img
        code = cv2.COLOR_BGRA2GRAY if c == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(img, code)[:, :, None]
    if channels == 3:
        if c == 1:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        code = cv2.COLOR_BGRA2RGB if c == 4 else cv2.COLOR_BGR2RGB
        return cv2.cvtColor(img, code)
    raise ValueError(f"channels must be 1 or 3, not {channels}")


def resize_to_model(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 [H, W, C] to the model's input size; INTER_AREA when shrinking (no aliasing)."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    shrink = img.shape[0] > height or img.shape[1] > width
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def from_frame(frame: np.ndarray, channels: int, bgr: bool = True, source: str = "frame") -> np.ndarray:
    """A camera frame or an array (OpenCV's BGR order when `bgr`, else RGB or gray) -> uint8
    [H, W, channels] in the model's colour order (gray or RGB), as read_image gives for a file."""
    img = np.asarray(frame)
    if not bgr and img.ndim == 3 and img.shape[2] in (3, 4):
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    return to_uint8_channels(img, channels, source=source)


_huge_lock = threading.Lock()
# PIL raises above twice its warning limit; past that we refuse rather than decode.
PIL_HARD_LIMIT = 2 * 89_478_485


def probe_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels; None when unknown.
    Raises ImageError for a header that declares more than PIL_HARD_LIMIT pixels."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        return None
    try:
        # through open_regular, not by path: Pillow's own open of a FIFO blocks until a writer comes
        with os.fdopen(open_regular(path), "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(f) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large to decode safely ({e})") from e
    except Exception:  # noqa: BLE001 - unknown or broken header: OpenCV decides and names the error
        return None


def reduction_for(width: int, height: int, max_pixels: int) -> int:
    """Smallest JPEG-style reduction (1, 2, 4, 8) that brings the image under max_pixels; 0: none does."""
    for f in (1, 2, 4, 8):
        if (width // f) * (height // f) <= max_pixels:
            return f
    return 0


# IMREAD_IGNORE_ORIENTATION: the full-size decode (IMREAD_UNCHANGED, as in training) ignores the
# EXIF orientation tag, so the reduced one must too, or a tagged JPEG comes out rotated with its
# scale computed against the wrong side.
_REDUCED = {k: flag | cv2.IMREAD_IGNORE_ORIENTATION for k, flag in {
    (1, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2, (1, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (1, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8, (3, 2): cv2.IMREAD_REDUCED_COLOR_2,
    (3, 4): cv2.IMREAD_REDUCED_COLOR_4, (3, 8): cv2.IMREAD_REDUCED_COLOR_8}.items()}


@dataclass
class Decoded:
    image: np.ndarray               # uint8 [h, w, C] as decoded (possibly reduced)
    original: tuple[int, int]       # (height, width) of the file
    scale: float                    # original pixels per decoded pixel

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


def decode(path: Path, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Read an image for the model, guarding memory on huge files.

    Up to max_pixels: read_image (16-bit, gray/RGB/RGBA handled there). Above:
    OpenCV's reduced decode (IMREAD_REDUCED_*_{2,4,8}, the smallest factor that fits): JPEG is
    scaled inside libjpeg, so only the reduced image is ever allocated; other formats are decoded
    at full size and shrunk, so those decodes run one at a time (a lock) to bound peak memory to
    one full-size image. Headers over PIL_HARD_LIMIT pixels are refused.
    """
    size = probe_size(path)
    if size is None or size[0] * size[1] <= max_pixels:
        img = read_image(path, channels)
        return Decoded(img, (img.shape[0], img.shape[1]), 1.0)
    w, h = size
    f = reduction_for(w, h, max_pixels)
    if f == 0:
        raise ImageError(f"{path}: image too large ({w}x{h}; over {max_pixels} pixels even at 1/8, see --max-pixels)")
    with _huge_lock:
        img = decode_file(path, _REDUCED[(channels, f)])
    img = to_uint8_channels(img, channels, source=str(path))
    return Decoded(img, (h, w), w / img.shape[1])
