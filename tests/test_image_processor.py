"""Tests for cogvlm.utils.preprocessing.image_processor: bit-exact preprocessing and clear load errors."""
import functools
import http.server
import threading
import time
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


# --- unusual image modes: expected pixels computed here, from the values the test writes ---------------------


def _saved(img: Image.Image, path: Path, fmt: str = "PNG") -> str:
    img.save(path, fmt)
    return str(path)


def _pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    assert img.mode == "RGB"
    return [img.getpixel((x, 0)) for x in range(img.width)]


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grey level v is 8-bit round(v / 257) (65535 / 255 = 257); `.convert('RGB')` would clip every
    value above 255 to white."""
    levels = [0, 128, 129, 257, 1000, 32896, 40000, 65535]
    grey16 = Image.new("I;16", (len(levels), 1))
    for x, v in enumerate(levels):
        grey16.putpixel((x, 0), v)
    path = _saved(grey16, tmp_path / "grey16.png")
    assert Image.open(path).mode in ("I;16", "I")           # how Pillow reads it back: the case under test
    expected = [(round(v / 257),) * 3 for v in levels]
    assert expected[-1] == (255, 255, 255) and expected[4] == (4, 4, 4)
    assert _pixels(load_image(path)) == expected
    as_rgb = Image.frombytes("RGB", (len(levels), 1), bytes(c for pixel in expected for c in pixel))
    assert torch.equal(ImageProcessor(8)(Image.open(path)), ImageProcessor(8)(as_rgb))   # the processor too


def test_32_bit_integer_image_outside_16_bits_is_refused(tmp_path):
    wide = Image.new("I", (2, 1))
    wide.putpixel((1, 0), 70000)
    path = _saved(wide, tmp_path / "wide.tif", "TIFF")
    with pytest.raises(ImageLoadError, match="16-bit range") as caught:
        load_image(path)
    assert "\n" not in str(caught.value) and path in str(caught.value)


def test_float_image_is_refused_with_one_line(tmp_path):
    path = _saved(Image.new("F", (2, 2), 0.5), tmp_path / "float.tif", "TIFF")
    with pytest.raises(ImageLoadError, match="floating-point") as caught:
        load_image(path)
    assert "\n" not in str(caught.value)


def _composited(colour: tuple[int, ...], alpha: int) -> tuple[int, int, int]:
    """`colour` at opacity alpha / 255 over white."""
    return tuple(round(c * alpha / 255 + 255 * (1 - alpha / 255)) for c in colour)


def _close(got, expected, tolerance=1):       # Pillow composites in integer arithmetic: rounding may differ by 1
    return all(abs(a - b) <= tolerance for pixel_a, pixel_b in zip(got, expected) for a, b in zip(pixel_a, pixel_b))


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    for x, pixel in enumerate([(0, 0, 0, 0), (10, 20, 30, 255), (0, 0, 0, 128)]):
        rgba.putpixel((x, 0), pixel)
    got = _pixels(load_image(_saved(rgba, tmp_path / "rgba.png")))
    assert got[:2] == [(255, 255, 255), (10, 20, 30)]              # exact at alpha 0 and 255
    assert _close(got[2:], [_composited((0, 0, 0), 128)])

    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (100, 255))
    la.putpixel((1, 0), (100, 0))
    assert _pixels(load_image(_saved(la, tmp_path / "la.png"))) == [(100, 100, 100), (255, 255, 255)]

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    path = _saved(palette, tmp_path / "p.png")
    Image.open(path).save(path, transparency=0)                   # palette entry 0 (black) is transparent
    assert "transparency" in Image.open(path).info
    assert _pixels(load_image(path)) == [(255, 255, 255), (200, 100, 50)]


def test_usual_modes_convert_as_published(tmp_path):
    """RGB, L, 1, CMYK and P without transparency: what `.convert('RGB')` gives, with values checked here."""
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert _pixels(load_image(_saved(bilevel, tmp_path / "one.png"))) == [(0, 0, 0), (255, 255, 255)]
    cmyk = Image.new("CMYK", (3, 1))
    for x, ink in enumerate([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)]):
        cmyk.putpixel((x, 0), ink)
    assert _pixels(load_image(_saved(cmyk, tmp_path / "cmyk.tif", "TIFF"))) == [(255, 255, 255), (0, 255, 255),
                                                                               (0, 0, 0)]
    grey = Image.new("L", (2, 1), 77)
    assert _pixels(load_image(_saved(grey, tmp_path / "l.png"))) == [(77, 77, 77)] * 2
    palette = Image.new("P", (1, 1))
    palette.putpalette([9, 8, 7] + [0] * 765)
    assert _pixels(load_image(_saved(palette, tmp_path / "p.png"))) == [(9, 8, 7)]
    rgb = Image.open(IMAGE_PATH)
    assert load_image(str(IMAGE_PATH)).tobytes() == rgb.convert("RGB").tobytes()


# --- a URL that trickles bytes, or sends too many ------------------------------------------------------------


class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    """/slow: one byte every TRICKLE_INTERVAL (never more than TRICKLE_BYTES, so a broken client cannot keep the
    test running); /big: a body of BIG_BYTES without a Content-Length; /declared: a Content-Length of BIG_BYTES."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path == "/declared":
            self.send_header("Content-Length", str(BIG_BYTES))
        self.end_headers()
        try:
            if self.path == "/slow":
                for _ in range(TRICKLE_BYTES):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(TRICKLE_INTERVAL)
            else:
                self.wfile.write(b"x" * BIG_BYTES)
        except (BrokenPipeError, ConnectionResetError):      # the client gave up, as it should
            pass

    def log_message(self, *args):
        pass


TRICKLE_INTERVAL = 0.05
TRICKLE_BYTES = 600            # 30 s at most
BIG_BYTES = 5000


@pytest.fixture
def trickle_url(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TrickleHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=functools.partial(server.serve_forever, poll_interval=POLL_INTERVAL),
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_trickling_download_ends_at_its_overall_budget(trickle_url):
    """Each byte arrives well within the per-read timeout, so only the overall budget can end this."""
    with pytest.raises(ImageLoadError) as caught:
        load_image(f"{trickle_url}/slow", timeout=SHORT_TIMEOUT, budget=0.5)
    message = str(caught.value)
    assert "not complete after 0.5 s" in message and "\n" not in message
    received = int(message.split("(")[1].split()[0])
    assert 0 < received < TRICKLE_BYTES


@pytest.mark.parametrize("path, words", [("/big", "more than the 1000 bytes allowed"),
                                         ("/declared", "5000 bytes is more than the 1000 allowed")])
def test_download_larger_than_the_limit_is_refused(trickle_url, path, words):
    with pytest.raises(ImageLoadError, match=words):
        load_image(f"{trickle_url}{path}", timeout=SHORT_TIMEOUT, max_bytes=1000)
