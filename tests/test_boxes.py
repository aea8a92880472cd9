"""Tests for cogvlm.utils.grounding.boxes: box parsing, thousandths <-> pixels, phrase grounding and drawing."""
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cogvlm.utils.grounding import boxes as grounding
from cogvlm.utils.grounding.boxes import (
    BOX_COLORS,
    DEFAULT_SPACY_PIPELINE,
    MAX_COORDINATE,
    Box,
    BoxGroup,
    GroundedPhrase,
    InvalidBoxError,
    draw_boxes,
    fallback_phrase,
    format_boxes,
    ground_phrases,
    parse_box_groups,
    parse_boxes,
    render_boxes,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
WHITE = (255, 255, 255)

coordinates = st.integers(0, MAX_COORDINATE)


@st.composite
def valid_boxes(draw):
    xs = sorted(draw(st.lists(coordinates, min_size=2, max_size=2)))
    ys = sorted(draw(st.lists(coordinates, min_size=2, max_size=2)))
    return Box(xs[0], ys[0], xs[1], ys[1])


# Text made of the pieces a box parser has to get right, glued in any order.
FRAGMENTS = ["[[", "]]", "[", "]", ",", ";", " ", "\n", "0", "7", "99", "086", "999", "1000", "-1", "x0", "a",
             "dog", " and ", ". ", "at", "９", "²"]
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
any_text = st.one_of(st.text(), fragment_text)


# --- parsing ------------------------------------------------------------------------------------------------------

def test_parse_published_box():
    # The README's box2caption example.
    assert parse_boxes("Tell me what you see within the designated area [[086,540,400,760]] in the picture.") == [
        Box(86, 540, 400, 760)
    ]


def test_parse_several_groups_and_boxes():
    text = "A dog[[086,540,400,760]] chasing two birds[[512,100,600,300;650,120,720,310]]."
    groups = parse_box_groups(text)
    assert groups == [
        BoxGroup((Box(86, 540, 400, 760),), 5, 24),
        BoxGroup((Box(512, 100, 600, 300), Box(650, 120, 720, 310)), 42, 77),
    ]
    assert [text[g.start:g.end] for g in groups] == ["[[086,540,400,760]]", "[[512,100,600,300;650,120,720,310]]"]
    assert parse_boxes(text) == [Box(86, 540, 400, 760), Box(512, 100, 600, 300), Box(650, 120, 720, 310)]


@pytest.mark.parametrize("text, expected", [
    ("[[1,2,3,4]]", Box(1, 2, 3, 4)),  # one digit
    ("[[12,34,56,78]]", Box(12, 34, 56, 78)),  # two digits
    ("[[ 12 , 34,56 ,78 ]]", Box(12, 34, 56, 78)),  # spaces around numbers and commas
    ("[[000,000,999,999]]", Box(0, 0, 999, 999)),
    ("[[5,5,5,5]]", Box(5, 5, 5, 5)),  # zero area
    ("[[[1,2,3,4]]]", Box(1, 2, 3, 4)),  # extra brackets around a group
])
def test_parse_lenient_forms(text, expected):
    assert parse_boxes(text) == [expected]


@pytest.mark.parametrize("text", [
    "[[1000,0,5,5]]",  # value > 999
    "[[500,0,400,5]]",  # x0 > x1
    "[[0,500,5,400]]",  # y0 > y1
    "[[1,2,3]]",  # too few values
    "[[1,2,3,4,5]]",  # too many values
    "[[1,2,a,4]]",  # not a number
    "[[-1,2,3,4]]",  # sign
    "[[1.5,2,3,4]]",  # decimal
    "[[１,2,3,4]]",  # non-ASCII digit
    "[[x0,y0,x1,y1]]",  # the template placeholder
    "[[]]",
    "[[1,2,3,4]",  # one closing bracket
    "[[12,34,5",  # cut off at the end of the answer
    "[1,2,3,4]",
])
def test_malformed_boxes_are_skipped(text):
    assert parse_boxes(text) == []
    assert parse_box_groups(text) == []


def test_group_keeps_its_valid_boxes():
    text = "two cats[[1,2,3,4;1000,0,0,0;5,6,7;10,20,30,40;9,9,1,1]] and a cut-off one[[12,34,5"
    assert parse_box_groups(text) == [BoxGroup((Box(1, 2, 3, 4), Box(10, 20, 30, 40)), 8, text.index("]]") + 2)]


@settings(max_examples=200)
@given(any_text)
def test_parsers_never_raise(text):
    groups = parse_box_groups(text)
    assert parse_boxes(text) == [box for group in groups for box in group.boxes]
    for group in groups:
        assert group.boxes
        assert text[group.start:group.end].startswith("[[") and text[group.start:group.end].endswith("]]")
        assert parse_boxes(text[group.start:group.end]) == list(group.boxes)


@given(st.lists(valid_boxes(), max_size=6))
def test_format_boxes_round_trip(boxes):
    assert parse_boxes(format_boxes(boxes)) == boxes


def test_format():
    assert str(Box(86, 540, 400, 760)) == "[[086,540,400,760]]"
    assert format_boxes([Box(86, 540, 400, 760), Box(0, 1, 2, 3)]) == "[[086,540,400,760;000,001,002,003]]"
    assert format_boxes([]) == ""


@pytest.mark.parametrize("values", [(1000, 0, 0, 0), (-1, 0, 0, 0), (5, 0, 4, 0), (0, 5, 0, 4), (1.0, 2, 3, 4)])
def test_invalid_box_is_a_value_error(values):
    with pytest.raises(InvalidBoxError, match="box"):
        Box(*values)


# --- thousandths <-> pixels -----------------------------------------------------------------------------------

def test_to_pixels_known_values():
    assert Box(500, 500, 999, 999).to_pixels(200, 100) == (100, 50, 200, 100)
    assert Box(0, 0, 0, 0).to_pixels(640, 480) == (0, 0, 0, 0)
    # The README's agent example on a 1120 x 1120 screenshot.
    assert Box(212, 498, 787, 564).to_pixels(1120, 1120) == (237, 558, 881, 632)
    # Halves round up: 5 / 1000 * 100 = 0.5 -> 1.
    assert Box(5, 5, 5, 5).to_pixels(100, 100) == (1, 1, 1, 1)


def test_from_pixels_and_center():
    assert Box.from_pixels(100, 50, 200, 100, 200, 100) == Box(500, 500, 999, 999)  # 1000 clamps to 999
    assert Box.from_pixels(-5, -5, 10, 10, 100, 100) == Box(0, 0, 100, 100)  # clamped at 0
    assert Box(212, 498, 787, 564).center_pixels(1000, 1000) == (500, 531)
    assert Box(0, 0, 999, 999).center_pixels(2, 2) == (1, 1)


@pytest.mark.parametrize("call", [
    lambda: Box(1, 2, 3, 4).to_pixels(0, 10),
    lambda: Box(1, 2, 3, 4).center_pixels(10, -1),
    lambda: Box.from_pixels(0, 0, 1, 1, 0, 0),
    lambda: Box.from_pixels(5, 0, 1, 1, 10, 10),
])
def test_pixel_conversion_errors(call):
    with pytest.raises(InvalidBoxError):
        call()


@given(st.integers(1, 4000), st.integers(1, 4000), st.data())
def test_pixels_round_trip_within_rounding(width, height, data):
    x0, x1 = sorted(data.draw(st.lists(st.integers(0, width), min_size=2, max_size=2)))
    y0, y1 = sorted(data.draw(st.lists(st.integers(0, height), min_size=2, max_size=2)))
    back = Box.from_pixels(x0, y0, x1, y1, width, height).to_pixels(width, height)
    # Half a thousandth of rounding each way, plus the clamp of 1000 to 999 at the far border.
    for original, value, size in zip((x0, y0, x1, y1), back, (width, height) * 2):
        assert abs(original - value) <= size / 1000 + 1


@given(valid_boxes(), st.integers(1000, 5000), st.integers(1000, 5000))
def test_thousandths_round_trip_exact_on_large_images(box, width, height):
    assert Box.from_pixels(*box.to_pixels(width, height), width, height) == box


# --- phrases ------------------------------------------------------------------------------------------------------

@dataclass
class Span:
    text: str
    start_char: int
    end_char: int


class StubNlp:
    """Stands in for a spaCy pipeline: noun chunks are the given substrings, found left to right."""

    def __init__(self, *chunks):
        self.chunks = chunks
        self.calls = 0

    def __call__(self, text):
        self.calls += 1
        spans, position = [], 0
        for chunk in self.chunks:
            start = text.index(chunk, position)
            spans.append(Span(chunk, start, start + len(chunk)))
            position = start + len(chunk)
        return types.SimpleNamespace(noun_chunks=spans)


CAPTION = "A man in a red shirt[[010,020,300,900]] walks his dog[[400,500,600,900;650,500,700,900]]."


def test_ground_phrases_with_pipeline_takes_last_noun_chunk():
    nlp = StubNlp("A man", "a red shirt", "his dog")
    assert ground_phrases(CAPTION, nlp=nlp) == [
        GroundedPhrase("a red shirt", [Box(10, 20, 300, 900)]),
        GroundedPhrase("his dog", [Box(400, 500, 600, 900), Box(650, 500, 700, 900)]),
    ]
    assert nlp.calls == 1  # the whole text is parsed once


def test_ground_phrases_pipeline_uses_only_the_window_and_falls_back():
    # No noun chunk between the two groups: a chunk before the first group must not be reused.
    text = "The cat[[1,2,3,4]] and then, sitting[[5,6,7,8]]"
    assert ground_phrases(text, nlp=StubNlp("The cat")) == [
        GroundedPhrase("The cat", [Box(1, 2, 3, 4)]),
        GroundedPhrase("sitting", [Box(5, 6, 7, 8)]),
    ]


def test_ground_phrases_fallback():
    assert ground_phrases(CAPTION, use_spacy=False) == [
        GroundedPhrase("A man in a red shirt", [Box(10, 20, 300, 900)]),
        GroundedPhrase("walks his dog", [Box(400, 500, 600, 900), Box(650, 500, 700, 900)]),
    ]
    text = "There are two cats[[1,2,3,4]] on the sofa[[5,6,7,8]], and a lamp is located at [[9,9,9,9]]."
    assert [g.phrase for g in ground_phrases(text, use_spacy=False)] == ["There are two cats", "the sofa", "a lamp"]
    assert ground_phrases("no boxes here", use_spacy=False) == []


@pytest.mark.parametrize("window, phrase", [
    ("There is a man", "There is a man"),
    (" and a red car", "a red car"),
    ("Two cats sit on the sofa, next to a lamp", "next to a lamp"),
    ("The first sentence. A bird", "A bird"),
    ("A dog. ", "A dog"),  # punctuation right before the box does not empty the phrase
    (" on the sofa", "the sofa"),
    ("The button is located at", "The button"),
    ("Where is it?\nthe red button in", "the red button"),
    ("a dog (left)", "a dog (left)"),
    ("the word 'exit'", "the word 'exit'"),
    ("", ""),
    (" , . ", ""),
])
def test_fallback_phrase(window, phrase):
    assert fallback_phrase(window) == phrase


@settings(max_examples=200)
@given(any_text)
def test_ground_phrases_fallback_never_raises(text):
    grounded = ground_phrases(text, use_spacy=False)
    assert [box for g in grounded for box in g.boxes] == parse_boxes(text)
    assert all(g.phrase == g.phrase.strip() for g in grounded)


@pytest.fixture
def fresh_default_nlp(monkeypatch):
    """Forget the cached default pipeline for one test (and restore the cache afterwards)."""
    monkeypatch.setattr(grounding, "_default_nlp", None)
    monkeypatch.setattr(grounding, "_default_nlp_tried", False)


def _fake_spacy(load):
    module = types.ModuleType("spacy")
    module.load = load
    return module


def test_default_pipeline_missing_falls_back(monkeypatch, fresh_default_nlp):
    loads = []

    def load(name):
        loads.append(name)
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setitem(sys.modules, "spacy", _fake_spacy(load))
    assert ground_phrases(CAPTION) == ground_phrases(CAPTION, use_spacy=False)
    assert loads == [DEFAULT_SPACY_PIPELINE]  # tried once, then cached


def test_default_pipeline_is_loaded_lazily_and_cached(monkeypatch, fresh_default_nlp):
    nlp = StubNlp("A man", "a red shirt", "his dog")
    loads = []
    monkeypatch.setitem(sys.modules, "spacy", _fake_spacy(lambda name: loads.append(name) or nlp))
    assert [g.phrase for g in ground_phrases(CAPTION)] == ["a red shirt", "his dog"]
    ground_phrases(CAPTION)
    assert loads == [DEFAULT_SPACY_PIPELINE]
    assert nlp.calls == 2


def test_spacy_not_installed_falls_back(monkeypatch, fresh_default_nlp):
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` raise ImportError
    assert ground_phrases(CAPTION) == ground_phrases(CAPTION, use_spacy=False)


def test_import_has_no_heavy_side_effects():
    code = (
        "import sys; import cogvlm.utils.grounding.boxes, cogvlm.utils.grounding.templates, cogvlm.utils.grounding.agent_answer; "
        "print(sorted(m for m in ('spacy', 'torch', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- drawing ------------------------------------------------------------------------------------------------------

def test_draw_boxes_colours_the_edges_only(tmp_path):
    image = Image.new("RGB", (400, 300), WHITE)
    grounded = [
        GroundedPhrase("a man", [Box(100, 200, 500, 900)]),  # pixels (40, 60, 200, 270)
        GroundedPhrase("a dog", [Box(600, 200, 900, 900)]),  # pixels (240, 60, 360, 270)
    ]
    path = draw_boxes(image, grounded, tmp_path / "out.png")
    assert path == tmp_path / "out.png"
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB" and saved.size == (400, 300)
        assert saved.getpixel((40, 165)) == BOX_COLORS[0]  # left edge, half way down
        assert saved.getpixel((200, 165)) == BOX_COLORS[0]  # right edge
        assert saved.getpixel((120, 270)) == BOX_COLORS[0]  # bottom edge
        assert saved.getpixel((120, 165)) == WHITE  # well inside
        assert saved.getpixel((240, 165)) == BOX_COLORS[1]  # the second phrase's colour
        assert saved.getpixel((300, 165)) == WHITE
        assert saved.getpixel((220, 165)) == WHITE  # between the boxes
    assert image.getpixel((40, 165)) == WHITE  # the input image is left alone


def test_render_boxes_returns_the_drawing_draw_boxes_saves(tmp_path):
    image = Image.new("RGB", (400, 300), WHITE)
    grounded = [GroundedPhrase("a man", [Box(100, 200, 500, 900)])]
    rendered = render_boxes(image, grounded)
    assert rendered is not image and rendered.getpixel((40, 165)) == BOX_COLORS[0]
    with Image.open(draw_boxes(image, grounded, tmp_path / "out.png")) as saved:
        assert saved.tobytes() == rendered.tobytes()
    assert image.getpixel((40, 165)) == WHITE


@pytest.mark.parametrize("size", [(300, 200), (1, 1), (7, 3)])
def test_draw_boxes_at_edges_and_degenerate(tmp_path, size):
    grounded = [
        GroundedPhrase("the whole image with a very long label that does not fit", [Box(0, 0, 999, 999)]),
        GroundedPhrase("bottom right corner", [Box(990, 990, 999, 999)]),
        GroundedPhrase("top left", [Box(0, 0, 5, 5)]),
        GroundedPhrase("a point", [Box(500, 500, 500, 500)]),  # zero area
        GroundedPhrase("", [Box(100, 100, 200, 200)]),  # no label
        GroundedPhrase("汉字 ✓ \x00", [Box(300, 300, 400, 400)]),  # characters the default font may lack
        GroundedPhrase("no boxes", []),
    ] + [GroundedPhrase(f"p{i}", [Box(i, i, i + 1, i + 1)]) for i in range(len(BOX_COLORS) + 1)]
    path = draw_boxes(Image.new("RGB", size, WHITE), grounded, tmp_path / "edges.png")
    with Image.open(path) as saved:
        assert saved.size == size
    # At the far border the outline is clipped into the image.
    if size == (300, 200):
        with Image.open(path) as saved:
            assert saved.getpixel((299, 100)) == BOX_COLORS[0]


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "1"])
def test_draw_boxes_converts_to_rgb_and_saves_without_boxes(tmp_path, mode):
    image = Image.new(mode, (20, 10))
    path = draw_boxes(image, [], str(tmp_path / "copy.png"))
    with Image.open(path) as saved:
        assert saved.mode == "RGB" and saved.size == (20, 10)
        assert saved.tobytes() == image.convert("RGB").tobytes()
