"""Tests for utils/training/data.py: captcha and CogVLM-SFT-311K samples, bad data skipped and counted, accuracy."""
import json
from pathlib import Path

import pytest
from PIL import Image

from cogvlm.utils.training.data import (CAPTCHA_QUERY, AccuracyRow, Sample, SkippedDataWarning, captcha_samples,
                                 exact_match, format_accuracy_table, load_images_skipping_bad, sft_samples)
from cogvlm.utils.preprocessing.image_processor import load_image

CONVERSATION = {"conversations": [
    {"role": "user", "content": "What animal is this?"},
    {"role": "assistant", "content": "A zebra."},
    {"role": "user", "content": "Where is it standing?"},
    {"role": "assistant", "content": "Under a thorny tree."},
]}


def _image(path: Path, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def _label(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")


@pytest.fixture
def sft_part(tmp_path) -> Path:
    """One part in the published layout: a good two-round conversation, malformed JSON, a label without image."""
    part = tmp_path / "llava_instruction_multi_conversations_formate"
    _image(part / "images" / "00000001.jpg")
    _image(part / "images" / "00000002.jpg")
    _label(part / "labels" / "00000001.json", CONVERSATION)
    _label(part / "labels" / "00000002.json", '{"conversations": [{"role": "user", "content": ')
    _label(part / "labels" / "00000003.json", CONVERSATION)
    return part


def test_captcha_samples_answer_is_the_stem(tmp_path):
    for label in ("B7", "0042", "x9y"):
        _image(tmp_path / f"{label}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    samples = captcha_samples(tmp_path)
    assert [s.answer for s in samples] == ["0042", "B7", "x9y"]
    assert all(s.query == CAPTCHA_QUERY and s.history == [] and s.image_path.parent == tmp_path for s in samples)
    assert captcha_samples(tmp_path, query="CAPTCHA:")[0].query == "CAPTCHA:"


def test_captcha_samples_of_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image files"):
        captcha_samples(tmp_path)


def test_sft_each_assistant_turn_is_a_sample_with_earlier_turns_as_history(sft_part):
    with pytest.warns(SkippedDataWarning) as caught:
        samples = sft_samples(sft_part)
    image = sft_part / "images" / "00000001.jpg"
    assert samples == [
        Sample(image, "What animal is this?", "A zebra.", []),
        Sample(image, "Where is it standing?", "Under a thorny tree.", [("What animal is this?", "A zebra.")]),
    ]
    messages = [str(w.message) for w in caught]
    assert any("00000002.json" in m for m in messages)                    # malformed JSON
    assert any("00000003.json" in m and "no image" in m for m in messages)
    assert messages[-1].startswith("skipped 2 of 3 label files")


@pytest.mark.parametrize("label", [
    [], {"other": 1}, {"conversations": []},
    {"conversations": [{"role": "assistant", "content": "no question"}]},
    {"conversations": [{"role": "user", "content": "a question without answer"}]},
    {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]},
    {"conversations": [{"role": "user", "content": "q"}, "not a turn"]},
])
def test_sft_structurally_malformed_labels_are_skipped(tmp_path, label):
    _image(tmp_path / "images" / "1.jpg")
    _label(tmp_path / "labels" / "1.json", label)
    with pytest.warns(SkippedDataWarning) as caught:
        assert sft_samples(tmp_path) == []
    assert [str(w.message).startswith(f"skipped {tmp_path}") for w in caught] == [True, False]
    assert str(caught[-1].message).startswith("skipped 1 of 1 label files")


def test_sft_captions_and_the_whole_set_with_parts_as_subfolders(tmp_path, sft_part):
    details = tmp_path / "llava_details-minigpt4_3500_formate"
    _image(details / "images" / "00000001.jpg")
    _label(details / "labels" / "00000001.json", {"captions": [{"role": "caption", "content": "A beach."}]})
    with pytest.warns(SkippedDataWarning) as caught:
        samples = sft_samples(tmp_path)
    assert str(caught[-1].message).startswith("skipped 2 of 4 label files")
    assert samples[0] == Sample(details / "images" / "00000001.jpg", "", "A beach.", [])
    assert len(samples) == 3
    with pytest.warns(SkippedDataWarning):
        assert sft_samples(tmp_path, caption_query="Describe the image.")[0].query == "Describe the image."


def test_sft_language_label_folders(tmp_path, recwarn):
    _image(tmp_path / "images" / "1.jpg")
    _label(tmp_path / "labels_en" / "1.json", CONVERSATION)
    _label(tmp_path / "labels_zh" / "1.json", {"conversations": [{"role": "user", "content": "这是什么动物？"},
                                                                  {"role": "assistant", "content": "斑马。"}]})
    assert sft_samples(tmp_path)[0].answer == "A zebra."
    assert [s.answer for s in sft_samples(tmp_path, labels="labels_zh")] == ["斑马。"]
    assert not recwarn.list
    with pytest.raises(FileNotFoundError, match="labels_xx"):
        sft_samples(tmp_path, labels="labels_xx")


def test_sft_without_images_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/"):
        sft_samples(tmp_path)


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path):
    good = _image(tmp_path / "good.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    not_an_image = tmp_path / "text.png"
    not_an_image.write_text("hello")
    samples = [Sample(p, CAPTCHA_QUERY, p.stem) for p in (good, truncated, not_an_image, tmp_path / "gone.png")]
    with pytest.warns(SkippedDataWarning) as caught:
        kept, skipped = load_images_skipping_bad(samples)
    assert skipped == 3 and len(caught) == 3
    assert [(s.answer, image.size) for s, image in kept] == [("good", (8, 6))]


def test_load_images_with_a_custom_loader(tmp_path, recwarn):
    samples = [Sample(_image(tmp_path / "a.png", (5, 4)), "q", "a")]
    kept, skipped = load_images_skipping_bad(samples, lambda path: load_image(path).size)
    assert kept == [(samples[0], (5, 4))] and skipped == 0 and not recwarn.list


def test_exact_match():
    assert exact_match(["A7X3", "b2", "c"], ["A7X3", "B2", "d"]) == pytest.approx((1 / 3, 2 / 3))
    assert exact_match(["x"], ["x"]) == (1.0, 1.0)
    assert exact_match([" x"], ["x"]) == (0.0, 0.0)                  # compared as given
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        exact_match([], [])


def test_format_accuracy_table():
    table = format_accuracy_table([AccuracyRow("valid", 5, 1.0, 1.0), ("test", 15, 14 / 15, 1.0)])
    assert table.splitlines() == [
        "| split | count | exact match % | case-insensitive % |",
        "|:------|------:|--------------:|-------------------:|",
        "| valid |     5 |        100.00 |             100.00 |",
        "| test  |    15 |         93.33 |             100.00 |",
    ]
