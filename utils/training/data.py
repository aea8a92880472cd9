"""Fine-tuning data for CogVLM and CogAgent alike: samples, image loading that skips bad files, and accuracy.

Two sources:
  * a captcha folder (made by finetune_demo/make_captcha_dataset.py, split by utils/split_dataset.py): one sample
    per image, the file stem is the answer. The published demo prompts with "CAPTCHA:"; we ask a question
    (CAPTCHA_QUERY), and `query=` takes either.
  * the CogVLM-SFT-311K layout (dataset.md of the published repository): `images/<stem>.jpg` beside
    `labels/<stem>.json` (`labels_en/` or `labels_zh/` in some copies); a label holds either
    `{"conversations": [{"role": "user" | "assistant", "content": ...}, ...]}` or
    `{"captions": [{"role": "caption", "content": ...}]}`.

A broken label or image never stops a run: it is skipped with a SkippedDataWarning and counted.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence, TypeVar

from cogvlm.utils.preprocessing.image_processor import ImageLoadError, load_image
from cogvlm.utils.training.splits import image_files

CAPTCHA_QUERY = "What text is written in the image?"
# Label folder names of CogVLM-SFT-311K copies, in the order they are looked for.
SFT_LABEL_FOLDERS = ("labels", "labels_en", "labels_zh")
SFT_IMAGE_FOLDER = "images"
USER, ASSISTANT, CAPTION = "user", "assistant", "caption"

Loaded = TypeVar("Loaded")


class SkippedDataWarning(UserWarning):
    """A label file or image was unusable and left out."""


@dataclass
class Sample:
    """One training target: `answer` to `query` about the image, after the `history` of (query, answer) turns."""

    image_path: Path
    query: str
    answer: str
    history: list[tuple[str, str]] = field(default_factory=list)


def captcha_samples(folder, query: str = CAPTCHA_QUERY) -> list[Sample]:
    """One sample per image directly in `folder`, sorted by name; the answer is the file stem (the label)."""
    paths = image_files(folder)
    if not paths:
        raise FileNotFoundError(f"no image files in {folder}")
    return [Sample(path, query, path.stem) for path in paths]


def _sft_subsets(root: Path) -> list[Path]:
    """`root` itself if it holds images/, else its subfolders that do (the three parts of CogVLM-SFT-311K)."""
    if (root / SFT_IMAGE_FOLDER).is_dir():
        return [root]
    subsets = sorted(d for d in root.iterdir() if (d / SFT_IMAGE_FOLDER).is_dir()) if root.is_dir() else []
    if not subsets:
        raise FileNotFoundError(f"no {SFT_IMAGE_FOLDER}/ folder in {root} or in its subfolders")
    return subsets


def _label_folder(subset: Path, name: str | None) -> Path:
    names = (name,) if name else SFT_LABEL_FOLDERS
    for candidate in names:
        if (subset / candidate).is_dir():
            return subset / candidate
    raise FileNotFoundError(f"no label folder ({' or '.join(f'{n}/' for n in names)}) in {subset}")


def _turns(label: dict, caption_query: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(query, answer, history) for each assistant turn or caption of one label; ValueError if malformed."""
    if not isinstance(label, dict):
        raise ValueError("the top level is not an object")
    if "conversations" in label:
        turns, expected = label["conversations"], (USER, ASSISTANT)
    elif "captions" in label:
        turns, expected = label["captions"], (CAPTION,)
    else:
        raise ValueError('neither "conversations" nor "captions"')
    if not isinstance(turns, list) or not turns:
        raise ValueError("the turn list is empty or not a list")
    for i, turn in enumerate(turns):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role != expected[i % len(expected)] or not isinstance(turn.get("content"), str):
            raise ValueError(f"turn {i} should have role {expected[i % len(expected)]!r} and string content")
    if expected == (CAPTION,):
        return [(caption_query, turn["content"], []) for turn in turns]
    if len(turns) % 2:
        raise ValueError("the conversation ends with a user turn")
    pairs = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns), 2)]
    return [(query, answer, pairs[:i]) for i, (query, answer) in enumerate(pairs)]


def sft_samples(root, labels: str | None = None, caption_query: str = "") -> list[Sample]:
    """Samples of a CogVLM-SFT-311K folder (one part, or the whole set with its parts as subfolders).

    Each assistant turn becomes a sample whose history holds the turns before it; each caption a sample with
    `caption_query` (empty: a caption answers the image alone). `labels` picks the label folder (default: the
    first of SFT_LABEL_FOLDERS that exists). A label that is not valid JSON, has an unexpected structure or has no
    image is skipped: one warning each and one with the count.
    """
    root = Path(root)
    samples: list[Sample] = []
    total = skipped = 0
    for subset in _sft_subsets(root):
        images = {path.stem: path for path in image_files(subset / SFT_IMAGE_FOLDER)}
        for label_path in sorted(_label_folder(subset, labels).glob("*.json")):
            total += 1
            try:
                if label_path.stem not in images:
                    raise ValueError(f"no image {label_path.stem}.* in {subset / SFT_IMAGE_FOLDER}")
                turns = _turns(json.loads(label_path.read_text(encoding="utf-8")), caption_query)
            except (OSError, ValueError) as problem:   # ValueError includes JSON and UTF-8 decoding errors
                warnings.warn(f"skipped {label_path}: {problem}", SkippedDataWarning, stacklevel=2)
                skipped += 1
                continue
            samples.extend(Sample(images[label_path.stem], q, a, history) for q, a, history in turns)
    if skipped:
        warnings.warn(f"skipped {skipped} of {total} label files under {root}", SkippedDataWarning, stacklevel=2)
    return samples


def load_images_skipping_bad(samples: Iterable[Sample], loader: Callable[[Path], Loaded] = load_image
                             ) -> tuple[list[tuple[Sample, Loaded]], int]:
    """(sample, loader(sample.image_path)) for every sample whose image loads, and how many did not.

    `loader` signals a bad image with ImageLoadError, as load_image does; wrap load_image to keep something other
    than the PIL image (e.g. `lambda p: processor(load_image(p))` keeps pixel tensors). Other errors propagate.
    """
    kept, skipped = [], 0
    for sample in samples:
        try:
            kept.append((sample, loader(sample.image_path)))
        except ImageLoadError as problem:
            warnings.warn(f"skipped a sample: {problem}", SkippedDataWarning, stacklevel=2)
            skipped += 1
    return kept, skipped


def exact_match(predictions: Sequence[str], labels: Sequence[str]) -> tuple[float, float]:
    """(exact, case-insensitive) fraction of predictions equal to their label, as the published demo's acc and
    acc_w/o_case. Strings are compared as given: strip them first if the decoder leaves spaces."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no predictions to score")
    exact = sum(p == t for p, t in zip(predictions, labels))
    folded = sum(p.casefold() == t.casefold() for p, t in zip(predictions, labels))
    return exact / len(labels), folded / len(labels)


class AccuracyRow(NamedTuple):
    split: str
    count: int
    exact: float               # fractions in [0, 1], shown as percentages
    case_insensitive: float


def format_accuracy_table(rows: Iterable[AccuracyRow | tuple[str, int, float, float]]) -> str:
    """A Markdown table of (split, count, exact, case-insensitive) rows, aligned so it also reads as plain text."""
    header = ("split", "count", "exact match %", "case-insensitive %")
    body = [(split, str(count), f"{100 * exact:.2f}", f"{100 * folded:.2f}")
            for split, count, exact, folded in rows]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    left_aligned = (True, False, False, False)

    def line(cells) -> str:
        padded = (c.ljust(w) if left else c.rjust(w) for c, w, left in zip(cells, widths, left_aligned))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if left else "-" * (w + 1) + ":"
                          for w, left in zip(widths, left_aligned)) + "|"
    return "\n".join([line(header), rule, *map(line, body)])
