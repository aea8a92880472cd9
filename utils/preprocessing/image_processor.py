"""Loading user images and turning them into normalised pixel tensors.

Reproduces the reference ``BlipImageEvalProcessor`` (torchvision Resize with
bicubic interpolation on a PIL image, ToTensor, Normalize) with Pillow and
torch only, bit for bit.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

# OpenAI CLIP statistics, used by EVA-CLIP.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXEL_VALUE = 255.0
URL_SCHEMES = ("http://", "https://")
QUOTE_CHARS = "'\""

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


def _decode(data: io.BytesIO, source: str) -> Image.Image:
    """Fully decode ``data`` into an RGB image.

    ``Image.open`` only reads the header; ``load()`` decodes the pixels, which
    is where truncated files fail (Pillow's LOAD_TRUNCATED_IMAGES stays False).
    """
    try:
        with Image.open(data) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"not a supported image file: {source}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(f"cannot decode image {source}: {_one_line(exc)}") from exc


def _download(url: str, timeout: float) -> io.BytesIO:
    import requests  # deferred: ~0.2 s of import time that local files never need

    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "error"
        reason = exc.response.reason if exc.response is not None else ""
        raise ImageLoadError(f"could not download image {url}: HTTP {status} {reason}".rstrip()) from exc
    except requests.Timeout as exc:
        raise ImageLoadError(f"could not download image {url}: timed out after {timeout} s") from exc
    except requests.ConnectionError as exc:
        raise ImageLoadError(f"could not download image {url}: cannot connect to the server") from exc
    except requests.RequestException as exc:
        raise ImageLoadError(f"could not download image {url}: {type(exc).__name__}") from exc
    return io.BytesIO(response.content)


def load_image(source: str, timeout: float = 10.0) -> Image.Image:
    """Open a local image file or an http(s) URL as an RGB ``PIL.Image``.

    Every failure (missing file, directory, non-image, truncated data, network
    or HTTP error) raises ImageLoadError with a one-line message.
    """
    source = _clean_source(str(source))
    if not source:
        raise ImageLoadError("no image path or URL given")
    if source.lower().startswith(URL_SCHEMES):
        return _decode(_download(source, timeout), source)
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
        resized = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        hwc = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(size, size, 3)
        # Same op order as torchvision ToTensor + Normalize, so results are bit-equal.
        chw = hwc.permute(2, 0, 1).to(torch.float32) / MAX_PIXEL_VALUE  # (3, S, S)
        return ((chw - self._mean) / self._std).unsqueeze(0)  # (1, 3, S, S)

    def __repr__(self) -> str:
        return f"ImageProcessor(image_size={self.image_size})"
