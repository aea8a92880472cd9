"""Bounding boxes in CogVLM / CogAgent answers: parse them, pair them with phrases, convert and draw them.

The grounding models write a box as ``[[x0,y0,x1,y1]]``: the top-left and bottom-right corners in thousandths of
the image width (x) and height (y), origin at the top-left corner, each value zero-padded to three digits
(000-999). Several boxes for one phrase share one pair of double brackets, separated by ``;``::

    A dog[[086,540,400,760]] chasing two birds[[512,100,600,300;650,120,720,310]].

Parsing is lenient (1-3 digits, spaces around numbers and separators) and never raises: malformed boxes are
skipped. Importing this module imports neither spaCy nor torch; spaCy is loaded only when ``ground_phrases`` needs
it, and PIL only when ``draw_boxes`` runs.
"""
from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Coordinates are integers in [0, COORDINATE_SCALE), i.e. thousandths of the image width / height.
COORDINATE_SCALE = 1000
MAX_COORDINATE = COORDINATE_SCALE - 1
# The published format zero-pads to three digits; the parser also accepts one or two.
COORDINATE_DIGITS = 3
VALUES_PER_BOX = 4
BOX_SEPARATOR = ";"
VALUE_SEPARATOR = ","
BOX_OPEN = "[["
BOX_CLOSE = "]]"

# spaCy pipeline tried when ground_phrases gets no `nlp` (the one the published grounding parser uses).
DEFAULT_SPACY_PIPELINE = "en_core_web_sm"

# Colour-blind-safe palette (Okabe & Ito, "Color Universal Design", 2008) without its black; one colour per phrase.
BOX_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (213, 94, 0),  # vermillion
    (0, 114, 178),  # blue
    (204, 121, 167),  # reddish purple
    (240, 228, 66),  # yellow
)
LABEL_TEXT_COLOR = (255, 255, 255)
# Outline width: this fraction of the shorter image side, at least MIN_LINE_WIDTH pixels.
LINE_WIDTH_FRACTION = 1 / 200
MIN_LINE_WIDTH = 2
LABEL_PADDING = 2

# A double-bracketed group; its content may not hold brackets, so "[[[1,2,3,4]]" still finds the inner group
# and a group cut off at the end of the text ("[[12,34,5") matches nothing.
_GROUP_PATTERN = re.compile(r"\[\[([^\[\]]*)\]\]")
_VALUE_PATTERN = re.compile(rf"[0-9]{{1,{COORDINATE_DIGITS}}}")


class InvalidBoxError(ValueError):
    """Box coordinates outside 0..999, in the wrong order, or an image size that is not positive."""


def _round_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, halves up (exact integer arithmetic)."""
    return (2 * numerator + denominator) // (2 * denominator)


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidBoxError(f"image size must be positive, got {width}x{height}")


@dataclass(frozen=True)
class Box:
    """One box, corners in thousandths of the image width (x) and height (y); x0 <= x1, y0 <= y1.

    Pixel convention (the one the published demos use): a coordinate c on an image of size s is the pixel position
    c / 1000 * s, so 000 is the left/top border and 999 is 0.999 of the width/height (the published code never maps
    to exactly s). Pixel values are rounded to the nearest integer, halves up.
    """

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, int) and 0 <= v <= MAX_COORDINATE for v in values):
            raise InvalidBoxError(f"box coordinates must be integers in 0..{MAX_COORDINATE}, got {values}")
        if self.x0 > self.x1 or self.y0 > self.y1:
            raise InvalidBoxError(f"box corners must satisfy x0 <= x1 and y0 <= y1, got {values}")

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels of a width x height image."""
        _check_size(width, height)
        return (
            _round_div(self.x0 * width, COORDINATE_SCALE),
            _round_div(self.y0 * height, COORDINATE_SCALE),
            _round_div(self.x1 * width, COORDINATE_SCALE),
            _round_div(self.y1 * height, COORDINATE_SCALE),
        )

    @classmethod
    def from_pixels(cls, x0: int, y0: int, x1: int, y1: int, width: int, height: int) -> Box:
        """The box of pixel corners (x0, y0), (x1, y1) on a width x height image, clamped to 0..999."""
        _check_size(width, height)
        if x0 > x1 or y0 > y1:
            raise InvalidBoxError(f"pixel corners must satisfy x0 <= x1 and y0 <= y1, got {(x0, y0, x1, y1)}")

        def scale(value: int, size: int) -> int:
            return min(max(int(_round_div(value * COORDINATE_SCALE, size)), 0), MAX_COORDINATE)

        return cls(scale(x0, width), scale(y0, height), scale(x1, width), scale(y1, height))

    def center_pixels(self, width: int, height: int) -> tuple[int, int]:
        """The box centre in pixels: where CogAgent's click / type acts."""
        _check_size(width, height)
        return (
            _round_div((self.x0 + self.x1) * width, 2 * COORDINATE_SCALE),
            _round_div((self.y0 + self.y1) * height, 2 * COORDINATE_SCALE),
        )

    def values_text(self) -> str:
        """``086,540,400,760``: the four values as they appear inside the brackets."""
        return VALUE_SEPARATOR.join(f"{v:0{COORDINATE_DIGITS}d}" for v in (self.x0, self.y0, self.x1, self.y1))

    def __str__(self) -> str:
        return f"{BOX_OPEN}{self.values_text()}{BOX_CLOSE}"


def format_boxes(boxes: Iterable[Box]) -> str:
    """``[[a;b;...]]`` for the boxes of one phrase; the empty string for no boxes."""
    inner = BOX_SEPARATOR.join(box.values_text() for box in boxes)
    return f"{BOX_OPEN}{inner}{BOX_CLOSE}" if inner else ""


@dataclass(frozen=True)
class BoxGroup:
    """The valid boxes of one ``[[...]]`` and the group's character span ``text[start:end]`` (brackets included)."""

    boxes: tuple[Box, ...]
    start: int
    end: int


def _parse_box(item: str) -> Box | None:
    values = [value.strip() for value in item.split(VALUE_SEPARATOR)]
    if len(values) != VALUES_PER_BOX or not all(_VALUE_PATTERN.fullmatch(value) for value in values):
        return None
    x0, y0, x1, y1 = (int(value) for value in values)
    if x0 > x1 or y0 > y1:
        return None
    return Box(x0, y0, x1, y1)


def parse_box_groups(text: str) -> list[BoxGroup]:
    """Every ``[[...]]`` group of `text` holding at least one valid box, in order. Never raises.

    Inside a group, items are split at ``;``; an item is kept when it has exactly four comma-separated values of
    1-3 ASCII digits with x0 <= x1 and y0 <= y1, and skipped otherwise. A group with no valid item is skipped.
    """
    groups = []
    for match in _GROUP_PATTERN.finditer(text):
        boxes = tuple(box for item in match.group(1).split(BOX_SEPARATOR) if (box := _parse_box(item)) is not None)
        if boxes:
            groups.append(BoxGroup(boxes, match.start(), match.end()))
    return groups


def parse_boxes(text: str) -> list[Box]:
    """All valid boxes of `text`, in order (see parse_box_groups for what is skipped). Never raises."""
    return [box for group in parse_box_groups(text) for box in group.boxes]


# ---------------------------------------------------------------------------------------------------------------
# Phrases


@dataclass
class GroundedPhrase:
    """A phrase of the answer and the boxes the model attached to it."""

    phrase: str
    boxes: list[Box] = field(default_factory=list)


# Fallback phrase rule: the window is cut after the last of these boundaries ...
BOUNDARY_PUNCTUATION = ".!?;:,"
_BOUNDARY_PATTERN = re.compile(rf"[{re.escape(BOUNDARY_PUNCTUATION)}\n]|\band\b", re.IGNORECASE)
# ... and these words are dropped from either end of what is left ("is located at", "on", "and").
CONNECTOR_WORDS = frozenset({"and", "at", "by", "in", "is", "are", "located", "near", "of", "on", "to", "with"})
# ... and the phrase is trimmed of these characters (brackets and quotes are kept: "a dog (left)", "'OK'").
_EDGE_CHARACTERS = string.whitespace + BOUNDARY_PUNCTUATION

_default_nlp: Any = None
_default_nlp_tried = False


def _load_default_nlp() -> Any:
    """spaCy's DEFAULT_SPACY_PIPELINE if spaCy and that pipeline are installed, else None; tried once, cached."""
    global _default_nlp, _default_nlp_tried
    if not _default_nlp_tried:
        _default_nlp_tried = True
        try:
            import spacy  # lazy: importing this module must stay light

            _default_nlp = spacy.load(DEFAULT_SPACY_PIPELINE)
        except (ImportError, OSError):  # OSError: the pipeline is not installed; we never download it
            _default_nlp = None
    return _default_nlp


def fallback_phrase(window: str) -> str:
    """The phrase that ends `window` (the text just before a box group), without a language model.

    1. Strip whitespace and BOUNDARY_PUNCTUATION from the end of the window ("a dog. " -> "a dog").
    2. Keep what follows the last boundary: one of ``. ! ? ; : ,``, a newline or the word "and".
    3. Drop CONNECTOR_WORDS from both ends, repeatedly ("is located at", leading "on"), and strip whitespace
       and BOUNDARY_PUNCTUATION from both ends.

    Examples (window -> phrase): "There is a man" -> "There is a man"; " and a red car" -> "a red car";
    "Two cats sit on the sofa, next to a lamp" -> "next to a lamp"; " on the sofa" -> "the sofa";
    "The button is located at" -> "The button". The rule keeps whole clauses ("There is a man"): it does not
    know where a noun phrase starts. The result may be empty.
    """
    window = window.rstrip(_EDGE_CHARACTERS)
    boundaries = list(_BOUNDARY_PATTERN.finditer(window))
    if boundaries:
        window = window[boundaries[-1].end():]
    words = window.strip(_EDGE_CHARACTERS).split()
    while words and words[0].lower() in CONNECTOR_WORDS:
        words.pop(0)
    while words and words[-1].lower() in CONNECTOR_WORDS:
        words.pop()
    return " ".join(words).strip(_EDGE_CHARACTERS)


def _last_noun_chunk(doc: Any, start: int, end: int) -> str | None:
    """Text of the noun chunk lying in text[start:end] that ends last (ties: the longer one), or None."""
    best = None
    for chunk in doc.noun_chunks:
        if start <= chunk.start_char and chunk.end_char <= end:
            if best is None or (chunk.end_char, -chunk.start_char) > (best.end_char, -best.start_char):
                best = chunk
    return best.text.strip() if best is not None else None


def ground_phrases(
    text: str, nlp: Callable[[str], Any] | None = None, *, use_spacy: bool = True
) -> list[GroundedPhrase]:
    """Pair each box group of `text` with the phrase just before it.

    The window of a group is the text between the previous group (or the start of the text) and the group.
    With a pipeline, the phrase is the last noun chunk inside the window; without a pipeline, or when the window
    holds no noun chunk, it is fallback_phrase(window).

    nlp: any callable mapping the text to an object with ``.noun_chunks`` (spans with ``.text``, ``.start_char``
        and ``.end_char``), e.g. a spaCy Language. If None and `use_spacy`, spaCy's DEFAULT_SPACY_PIPELINE is
        loaded when installed (never downloaded); if it is not, the fallback rule is used.
    """
    groups = parse_box_groups(text)
    if not groups:
        return []
    if nlp is None and use_spacy:
        nlp = _load_default_nlp()
    doc = nlp(text) if nlp is not None else None

    grounded = []
    window_start = 0
    for group in groups:
        phrase = _last_noun_chunk(doc, window_start, group.start) if doc is not None else None
        if phrase is None:
            phrase = fallback_phrase(text[window_start:group.start])
        grounded.append(GroundedPhrase(phrase, list(group.boxes)))
        window_start = group.end
    return grounded


# ---------------------------------------------------------------------------------------------------------------
# Drawing


def _label_position(
    box: tuple[int, int, int, int], label_size: tuple[int, int], image_size: tuple[int, int], line_width: int
) -> tuple[int, int]:
    """Top-left corner of a label: above the box, or just inside its top edge when there is no room above;
    always inside the image (as far as the label fits)."""
    x0, y0, _, _ = box
    label_width, label_height = label_size
    width, height = image_size
    y = y0 - label_height
    if y < 0:
        y = y0 + line_width
    x = max(0, min(x0, width - label_width))
    y = max(0, min(y, height - label_height))
    return x, y


def draw_boxes(image: Any, grounded: Iterable[GroundedPhrase], path: str | Path) -> Path:
    """Save a PNG copy of `image` with each phrase's boxes drawn (see render_boxes); return path."""
    path = Path(path)
    render_boxes(image, grounded).save(path, format="PNG")
    return path


def render_boxes(image: Any, grounded: Iterable[GroundedPhrase]) -> Any:
    """A copy of `image` (converted to RGB) with each phrase's boxes outlined and labelled; `image` is unchanged.

    Phrase i uses colour BOX_COLORS[i % len(BOX_COLORS)]. Pixel corners follow Box.to_pixels, clipped to the
    image. The label (the phrase, PIL's default font, on a patch of the box colour) sits above the box, or inside
    its top edge when the box touches the top of the image. Phrases without boxes draw nothing.
    """
    from PIL import ImageDraw, ImageFont  # lazy: only drawing needs PIL

    canvas = image.convert("RGB")
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line_width = line_width_for(width, height)

    for index, item in enumerate(grounded):
        color = BOX_COLORS[index % len(BOX_COLORS)]
        for box in item.boxes:
            x0, y0, x1, y1 = (
                min(value, limit - 1) for value, limit in zip(box.to_pixels(width, height), (width, height) * 2)
            )
            draw.rectangle((x0, y0, x1, y1), outline=color, width=line_width)
            if item.phrase:
                _draw_label(draw, font, item.phrase, (x0, y0, x1, y1), (width, height), line_width, color)
    return canvas


def line_width_for(width: int, height: int) -> int:
    """The outline width on a width x height image: LINE_WIDTH_FRACTION of the shorter side, at least
    MIN_LINE_WIDTH pixels."""
    return max(MIN_LINE_WIDTH, round(min(width, height) * LINE_WIDTH_FRACTION))


def _draw_label(draw: Any, font: Any, label: str, box: Sequence[int], image_size: tuple[int, int],
                line_width: int, color: tuple[int, int, int]) -> None:
    try:
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    except UnicodeEncodeError:  # PIL's bitmap fallback font (no FreeType) only encodes Latin-1
        label = label.encode("ascii", "replace").decode("ascii")
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    label_size = (right + 2 * LABEL_PADDING, bottom + 2 * LABEL_PADDING)
    x, y = _label_position(tuple(box), label_size, image_size, line_width)
    draw.rectangle((x, y, x + label_size[0] - 1, y + label_size[1] - 1), fill=color)
    draw.text((x + LABEL_PADDING, y + LABEL_PADDING), label, font=font, fill=LABEL_TEXT_COLOR)
