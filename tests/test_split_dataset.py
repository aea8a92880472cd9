"""Tests for utils/split_dataset.py: every file lands in exactly one split, reproducibly, in the asked sizes."""
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogvlm.utils.training.splits import SPLITS, image_files, main, split, split_counts


def _make_files(folder: Path, count: int) -> set[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = {f"{i:04d}.png" for i in range(count)}
    for name in names:
        (folder / name).write_bytes(name.encode())      # content = name: a mix-up would show
    return names


def _names(result) -> dict[str, list[str]]:
    return {name: sorted(p.name for p in paths) for name, paths in result.items()}


def test_default_ratios_on_100_files_give_80_5_15_and_keep_every_file(tmp_path):
    source = tmp_path / "src"
    names = _make_files(source, 100)
    result = split(source, tmp_path / "out")
    assert [len(result[s]) for s in SPLITS] == [80, 5, 15]
    placed = [p.name for paths in result.values() for p in paths]
    assert len(placed) == len(set(placed)) and set(placed) == names
    for name, paths in result.items():
        assert sorted(p.name for p in (tmp_path / "out" / name).iterdir()) == sorted(p.name for p in paths)
        assert all(p.read_bytes() == p.name.encode() for p in paths)
    assert {p.name for p in source.iterdir()} == names            # copied: the source is untouched


def test_move_empties_the_source(tmp_path):
    source = tmp_path / "src"
    _make_files(source, 10)
    result = split(source, tmp_path / "out", copy=False)
    assert sum(len(paths) for paths in result.values()) == 10
    assert not any(source.iterdir())


def test_seed_reproducible_and_different_seed_differs(tmp_path):
    source = tmp_path / "src"
    _make_files(source, 40)
    first = _names(split(source, tmp_path / "a", seed=7))
    assert _names(split(source, tmp_path / "b", seed=7)) == first
    assert _names(split(source, tmp_path / "c", seed=8)) != first


def test_only_top_level_visible_image_files_are_split(tmp_path):
    source = tmp_path / "src"
    _make_files(source, 5)
    (source / "README.txt").write_text("not an image")
    (source / "._0000.png").write_bytes(b"macOS metadata")
    (source / "UPPER.JPG").write_bytes(b"x")
    (source / "nested").mkdir()
    (source / "nested" / "9999.png").write_bytes(b"x")
    assert len(image_files(source)) == 6
    assert sum(len(paths) for paths in split(source, tmp_path / "out").values()) == 6


@pytest.mark.parametrize("ratios", [(0.8, 0.2), (0.8, 0.1, 0.05, 0.05), (0.9, 0.1, 0.0), (1.2, -0.1, -0.1),
                                    (0.8, 0.1, 0.2), (0.5, 0.25, float("nan"))])
def test_bad_ratios_are_refused(tmp_path, ratios):
    _make_files(tmp_path / "src", 10)
    with pytest.raises(ValueError, match="ratios"):
        split(tmp_path / "src", tmp_path / "out", ratios=ratios)
    assert not (tmp_path / "out").exists()


def test_non_empty_split_folder_is_refused_before_anything_moves(tmp_path):
    source = tmp_path / "src"
    names = _make_files(source, 10)
    _make_files(tmp_path / "out" / "valid", 1)
    with pytest.raises(FileExistsError, match="valid"):
        split(source, tmp_path / "out", copy=False)
    assert {p.name for p in source.iterdir()} == names
    assert not (tmp_path / "out" / "train").exists()


def test_empty_split_folders_are_accepted(tmp_path):
    _make_files(tmp_path / "src", 10)
    for name in SPLITS:
        (tmp_path / "out" / name).mkdir(parents=True)
    assert sum(len(p) for p in split(tmp_path / "src", tmp_path / "out").values()) == 10


def test_missing_or_imageless_source_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        split(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        split(tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize(("count", "ratios", "sizes"), [
    (100, (0.8, 0.05, 0.15), (80, 5, 15)),
    (10000, (0.8, 0.05, 0.15), (8000, 500, 1500)),     # the published split of the Kaggle set
    (20, (0.8, 0.05, 0.15), (16, 1, 3)),
    (3, (0.8, 0.05, 0.15), (1, 1, 1)),
    (3, (0.01, 0.01, 0.98), (1, 1, 1)),
    (100, (0.29, 0.29, 0.42), (29, 29, 42)),           # 0.29 * 100 is just below 29 in floating point
    (2, (0.8, 0.05, 0.15), (2, 0, 0)),
])
def test_split_counts_rounding(count, ratios, sizes):
    assert split_counts(count, ratios) == sizes


@given(count=st.integers(3, 10_000),
       ratios=st.lists(st.floats(0.001, 1), min_size=3, max_size=3).map(lambda r: [x / sum(r) for x in r]))
def test_split_counts_cover_every_file_and_leave_no_split_empty(count, ratios):
    sizes = split_counts(count, ratios)
    assert sum(sizes) == count and min(sizes) >= 1


@settings(max_examples=25, deadline=None)
@given(count=st.integers(3, 60), seed=st.integers(0, 2**32 - 1))
def test_split_property_nothing_lost_or_duplicated(count, seed):
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        names = _make_files(source, count)
        result = split(source, Path(tmp) / "out", seed=seed)
        placed = [p.name for paths in result.values() for p in paths]
        assert sorted(placed) == sorted(names)
        assert all(len(result[s]) >= 1 for s in SPLITS)


def test_cli(tmp_path, capsys):
    _make_files(tmp_path / "src", 20)
    assert main(["--source", str(tmp_path / "src"), "--target", str(tmp_path / "out"), "--move"]) == 0
    assert "train 16, valid 1, test 3" in capsys.readouterr().out
    assert not any((tmp_path / "src").iterdir())
    _make_files(tmp_path / "src2", 20)
    assert main(["--source", str(tmp_path / "src2"), "--target", str(tmp_path / "out2"),
                 "--ratios", "0.5", "0.5", "0.5"]) == 1
    assert "sum to 1" in capsys.readouterr().err
