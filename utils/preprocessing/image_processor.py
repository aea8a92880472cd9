"""Loading user images and turning them into normalised pixel tensors.

Reproduces the reference ``BlipImageEvalProcessor`` (torchvision Resize with
bicubic interpolation on a PIL image, ToTensor, Normalize) with Pillow and
torch only, bit for bit.
"""
from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import torch
from PIL import Image, UnidentifiedImageError

# OpenAI CLIP statistics, used by EVA-CLIP.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXEL_VALUE = 255.0
URL_SCHEMES = ("http://", "https://")
QUOTE_CHARS = "'\""

# A URL's download: each read waits at most `timeout` seconds, and the whole download at most this long, so that a
# server that trickles bytes cannot hold the session; and no more than this many bytes (the model sees at most
# 1120 x 1120 pixels, a few MB even uncompressed).
DOWNLOAD_BUDGET_SECONDS = 60.0
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
_READ_SIZE = 64 * 1024
MAX_REDIRECTS = 5                   # followed when a URL check is given (see load_image)

# Pillow modes holding 16-bit grey levels (Pillow reads 16-bit greyscale PNGs as I;16 or, in older versions, I).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
MAX_16_BIT = 65535
# Modes with an alpha band; and P, when its palette has a transparent entry.
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255, 255)

# What Pillow may raise while identifying/decoding a broken file.
_DECODE_ERRORS = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # some plugins signal a malformed header this way
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


class ImageLoadError(ValueError):
    """An image could not be read from the given path or URL."""


def _clean_source(source: str) -> str:
    """Drop surrounding whitespace and matching quotes (pasted paths often have them)."""
    source = source.strip()
    while len(source) >= 2 and source[0] == source[-1] and source[0] in QUOTE_CHARS:
        source = source[1:-1].strip()
    return source


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Grey levels 0..65535 -> 0..255 (round(v / 257)), as RGB."""
    levels = torch.frombuffer(bytearray(img.convert("I").tobytes()), dtype=torch.int32)   # native-endian int32
    low, high = int(levels.min()), int(levels.max())
    if low < 0 or high > MAX_16_BIT:
        raise ImageLoadError(f"unsupported image: 32-bit integer pixels ({low}..{high}) outside the 16-bit range "
                             f"0..{MAX_16_BIT}; save it as an 8-bit or 16-bit image")
    grey = ((levels * 255 + MAX_16_BIT // 2) // MAX_16_BIT).to(torch.uint8)
    return Image.frombytes("L", img.size, grey.numpy().tobytes()).convert("RGB")


def _on_white(img: Image.Image) -> Image.Image:
    """Composite a transparent image on white: the colour stored under a fully transparent pixel is arbitrary
    (often black, which would hide black text drawn on transparency)."""
    return Image.alpha_composite(Image.new("RGBA", img.size, WHITE), img.convert("RGBA")).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any image Pillow reads -> RGB, for the model.

    RGB, L, 1, CMYK, YCbCr and P without transparency convert as the published ``.convert('RGB')`` does
    (bit-exact). Where that is wrong: 16-bit greyscale would clip at 255 (nearly all white), so it is scaled to 8
    bits; transparency (an alpha band, or a transparent palette entry) is composited on white instead of being
    dropped. Float images (mode F) have no defined value range and are refused.
    """
    if img.mode == "RGB":
        return img
    if img.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(img)
    if img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return _on_white(img)
    if img.mode == "F":
        raise ImageLoadError("unsupported image: 32-bit floating-point pixels have no defined value range; "
                             "save it as an 8-bit or 16-bit image")
    try:
        return img.convert("RGB")
    except ValueError as exc:              # a mode Pillow cannot convert (e.g. LAB, HSV)
        raise ImageLoadError(f"unsupported image mode {img.mode}: {_one_line(exc)}") from exc


def _decode(data: io.BytesIO, source: str) -> Image.Image:
    """Fully decode ``data`` into an RGB image.

    ``Image.open`` only reads the header; ``load()`` decodes the pixels, which
    is where truncated files fail (Pillow's LOAD_TRUNCATED_IMAGES stays False).
    """
    try:
        with Image.open(data) as img:
            img.load()
            return to_rgb(img)
    except ImageLoadError as exc:
        raise ImageLoadError(f"{exc}: {source}") from None
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"not a supported image file: {source}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(f"cannot decode image {source}: {_one_line(exc)}") from exc


def _read_body(response, url: str, budget: float, max_bytes: int) -> bytes:
    """The body, read as it arrives (read1: each read returns what came, so the deadline is checked between
    reads), within `budget` seconds and `max_bytes` bytes."""
    deadline = time.monotonic() + budget
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageLoadError(f"could not download image {url}: {int(declared)} bytes is more than the "
                             f"{max_bytes} allowed")
    body = bytearray()
    while chunk := response.raw.read1(_READ_SIZE, decode_content=True):
        body += chunk
        if len(body) > max_bytes:
            raise ImageLoadError(f"could not download image {url}: more than the {max_bytes} bytes allowed")
        if time.monotonic() > deadline:
            raise ImageLoadError(f"could not download image {url}: not complete after {budget:g} s "
                                 f"({len(body)} bytes received)")
    return bytes(body)


def _download(url: str, timeout: float, budget: float, max_bytes: int,
              check_url: Callable[[str], None] | None = None) -> io.BytesIO:
    import requests  # deferred: ~0.2 s of import time that local files never need
    import urllib3

    try:
        for _ in range(MAX_REDIRECTS + 1):
            if check_url is not None:
                check_url(url)
            # With a check, redirects are followed here so that each target is checked before it is fetched.
            with requests.get(url, timeout=timeout, stream=True, allow_redirects=check_url is None) as response:
                if check_url is not None and response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                response.raise_for_status()
                return io.BytesIO(_read_body(response, url, budget, max_bytes))
        raise ImageLoadError(f"could not download image {url}: more than {MAX_REDIRECTS} redirects")
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "error"
        reason = exc.response.reason if exc.response is not None else ""
        raise ImageLoadError(f"could not download image {url}: HTTP {status} {reason}".rstrip()) from exc
    except (requests.Timeout, urllib3.exceptions.TimeoutError) as exc:
        raise ImageLoadError(f"could not download image {url}: timed out after {timeout} s") from exc
    except requests.ConnectionError as exc:
        raise ImageLoadError(f"could not download image {url}: cannot connect to the server") from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise ImageLoadError(f"could not download image {url}: {type(exc).__name__}") from exc


def load_image(source: str, timeout: float = 10.0, budget: float = DOWNLOAD_BUDGET_SECONDS,
               max_bytes: int = MAX_DOWNLOAD_BYTES, check_url: Callable[[str], None] | None = None) -> Image.Image:
    """Open a local image file or an http(s) URL as an RGB ``PIL.Image`` (see ``to_rgb``).

    A URL gets `timeout` seconds per read, `budget` seconds and `max_bytes` bytes in all. Every failure (missing
    file, directory, non-image, truncated data, unsupported mode, network or HTTP error, too slow or too large)
    raises ImageLoadError with a one-line message. `check_url`, when given, sees the URL and every redirect target
    before it is fetched, and raises ImageLoadError to refuse one (a server's address policy).
    """
    source = _clean_source(str(source))
    if not source:
        raise ImageLoadError("no image path or URL given")
    if source.lower().startswith(URL_SCHEMES):
        return _decode(_download(source, timeout, budget, max_bytes, check_url), source)
    path = Path(source).expanduser()
    if not path.exists():
        raise ImageLoadError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageLoadError(f"expected an image file but got a directory: {path}")
    try:
        data = io.BytesIO(path.read_bytes())
    except OSError as exc:
        raise ImageLoadError(f"cannot read image file {path}: {exc.strerror or _one_line(exc)}") from exc
    return _decode(data, str(path))


def decode_image(data: bytes, source: str) -> Image.Image:
    """Image file bytes already in memory (an upload, a data: URL) -> RGB image; `source` names them in errors.
    Fails as load_image does (ImageLoadError)."""
    return _decode(io.BytesIO(data), source)


class ImageProcessor:
    """PIL image -> normalised float32 pixels ``(1, 3, S, S)`` for a ViT of input size S."""

    def __init__(self, image_size: int):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.image_size = image_size
        self._mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        size = self.image_size
        resized = to_rgb(img).resize((size, size), Image.Resampling.BICUBIC)
        hwc = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(size, size, 3)
        # Same op order as torchvision ToTensor + Normalize, so results are bit-equal.
        chw = hwc.permute(2, 0, 1).to(torch.float32) / MAX_PIXEL_VALUE  # (3, S, S)
        return ((chw - self._mean) / self._std).unsqueeze(0)  # (1, 3, S, S)

    def __repr__(self) -> str:
        return f"ImageProcessor(image_size={self.image_size})"
