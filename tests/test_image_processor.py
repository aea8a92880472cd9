"""Tests for cogvlm.utils.preprocessing.image_processor: bit-exact preprocessing and clear load errors."""
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile

from cogvlm.utils.preprocessing.image_processor import CLIP_MEAN, CLIP_STD, ImageLoadError, ImageProcessor, load_image

FIXTURES = Path(__file__).parent / "fixtures"
IMAGE_PATH = FIXTURES / "cogvlm-tiny" / "image.png"
IMAGE_SIZE_WH = (64, 48)
CLOSED_PORT_URL = "http://127.0.0.1:9/x.png"  # discard port: nothing listens there
SHORT_TIMEOUT = 60.0  # only bounds a hang: the loopback server answers at once, but a loaded machine may not
POLL_INTERVAL = 0.05  # how quickly the test server notices shutdown()
SERVER_LIFETIME = 900.0  # seconds; a leaked test server shuts itself down after this at the latest (module-scoped)


def _reference(fixture: str, key: str) -> dict:
    return torch.load(FIXTURES / fixture / "cases.pt", weights_only=False)[key]


@pytest.mark.parametrize(
    ("fixture", "key", "size"),
    [("cogvlm-tiny", "image", 56), ("cogagent-tiny", "image", 56), ("cogagent-tiny", "cross_image", 112)],
)
def test_pixel_values_bit_exact(fixture, key, size):
    reference = _reference(fixture, key)
    assert reference["resize_to"] == size
    assert tuple(reference["mean"]) == CLIP_MEAN and tuple(reference["std"]) == CLIP_STD
    pixels = ImageProcessor(size)(load_image(str(FIXTURES / fixture / "image.png")))
    assert pixels.shape == (1, 3, size, size) and pixels.dtype == torch.float32
    assert torch.equal(pixels, reference["pixel_values"])


def test_processor_converts_non_rgb_input():
    grey = Image.new("L", (10, 7), color=128)
    assert ImageProcessor(14)(grey).shape == (1, 3, 14, 14)


@pytest.mark.parametrize("bad_size", [0, -1, 56.0])
def test_processor_rejects_bad_size(bad_size):
    with pytest.raises(ValueError, match="image_size"):
        ImageProcessor(bad_size)


def test_load_image_returns_rgb():
    img = load_image(str(IMAGE_PATH))
    assert img.mode == "RGB" and img.size == IMAGE_SIZE_WH


def test_load_image_strips_whitespace_and_quotes():
    img = load_image(f"  '{IMAGE_PATH}'  ")
    assert img.size == IMAGE_SIZE_WH
    assert load_image(f'"{IMAGE_PATH}"\n').size == IMAGE_SIZE_WH


def _assert_load_fails(source, *fragments, **kwargs):
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.png"
    _assert_load_fails(str(missing), "not found", str(missing))


def test_empty_source():
    _assert_load_fails("  ''  ", "no image")


def test_directory(tmp_path):
    _assert_load_fails(str(tmp_path), "directory", str(tmp_path))


def test_text_file_named_png(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("definitely not an image")
    _assert_load_fails(str(fake), "not a supported image", str(fake))


def test_truncated_png(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = IMAGE_PATH.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_load_fails(str(truncated), str(truncated))


def test_unreachable_url():
    _assert_load_fails(CLOSED_PORT_URL, CLOSED_PORT_URL, timeout=SHORT_TIMEOUT)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server_url():
    """A local HTTP server for the fixture folder, stopped at teardown (or after SERVER_LIFETIME)."""
    handler = functools.partial(_QuietHandler, directory=str(IMAGE_PATH.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serve = functools.partial(server.serve_forever, poll_interval=POLL_INTERVAL)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(SHORT_TIMEOUT)


def test_download_success(server_url):
    img = load_image(f"{server_url}/image.png", timeout=SHORT_TIMEOUT)
    assert img.mode == "RGB" and img.size == IMAGE_SIZE_WH
    assert torch.equal(ImageProcessor(56)(img), ImageProcessor(56)(load_image(str(IMAGE_PATH))))


def test_download_404(server_url):
    _assert_load_fails(f"{server_url}/missing.png", "404", timeout=SHORT_TIMEOUT)


def test_download_non_image_body(server_url):
    _assert_load_fails(f"{server_url}/README.md", "not a supported image", timeout=SHORT_TIMEOUT)
