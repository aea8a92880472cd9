"""Split a folder of images into train / valid / test folders, as the published captcha demo does (80 / 5 / 15).

    python utils/split_dataset.py --source DIR --target DIR [--seed 0] [--ratios 0.8 0.05 0.15] [--copy | --move]

The image files directly inside SOURCE (not in its subfolders; hidden files ignored) are sorted by name, shuffled
with the seed, and copied (the default) or moved into TARGET/train, TARGET/valid and TARGET/test, keeping their
names. Each file lands in exactly one split. A split folder that already holds anything is refused, so two runs
never mix.

Rounding: valid and test get floor(count * ratio) files, train gets the rest. With 3 files or more no split is left
empty: an empty split takes one file from the largest. With 1 or 2 files some splits stay empty.
"""
from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
from pathlib import Path

SPLITS = ("train", "valid", "test")
DEFAULT_RATIOS = (0.8, 0.05, 0.15)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
RATIO_SUM_TOLERANCE = 1e-6
# count * ratio can land a hair below an integer (0.29 * 100 = 28.999999999999996); floor must still give 29.
FLOOR_TOLERANCE = 1e-9


def image_files(folder) -> list[Path]:
    """The image files directly inside `folder`, sorted by name (hidden files, e.g. macOS `._x.png`, left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def check_ratios(ratios) -> tuple[float, float, float]:
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != len(SPLITS):
        raise ValueError(f"give {len(SPLITS)} ratios ({' / '.join(SPLITS)}), got {len(ratios)}")
    if not all(math.isfinite(r) and r > 0 for r in ratios):
        raise ValueError(f"ratios must be positive numbers, got {ratios}")
    if abs(sum(ratios) - 1) > RATIO_SUM_TOLERANCE:
        raise ValueError(f"ratios must sum to 1, got {ratios} (sum {sum(ratios):g})")
    return ratios


def split_counts(count: int, ratios=DEFAULT_RATIOS) -> tuple[int, int, int]:
    """(train, valid, test) sizes for `count` files; see the module docstring for the rounding."""
    _, valid_ratio, test_ratio = check_ratios(ratios)
    valid = min(count, math.floor(count * valid_ratio + FLOOR_TOLERANCE))
    test = min(count - valid, math.floor(count * test_ratio + FLOOR_TOLERANCE))  # a train ratio near 0 can round away
    sizes = [count - valid - test, valid, test]
    if count >= len(SPLITS):
        for i in range(len(sizes)):
            if sizes[i] == 0:
                largest = max(range(len(sizes)), key=sizes.__getitem__)
                sizes[largest] -= 1
                sizes[i] = 1
    return tuple(sizes)


def split(source, target, seed: int = 0, ratios=DEFAULT_RATIOS, copy: bool = True) -> dict[str, list[Path]]:
    """Copy (or move) the images of `source` into `target`/{train,valid,test}; return each split's new paths."""
    ratios = check_ratios(ratios)
    files = image_files(source)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) directly in {source}")
    target = Path(target)
    folders = {name: target / name for name in SPLITS}
    occupied = [str(f) for f in folders.values() if f.is_dir() and any(f.iterdir())]
    if occupied:
        raise FileExistsError(f"split folder(s) not empty: {', '.join(occupied)}; empty them or choose another target")

    random.Random(seed).shuffle(files)
    transfer = shutil.copy2 if copy else shutil.move
    result = {}
    start = 0
    for name, size in zip(SPLITS, split_counts(len(files), ratios)):
        folders[name].mkdir(parents=True, exist_ok=True)
        result[name] = [Path(transfer(f, folders[name] / f.name)) for f in files[start:start + size]]
        start += size
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="folder holding the images")
    parser.add_argument("--target", required=True, help="folder to hold train/, valid/ and test/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    parser.add_argument("--ratios", type=float, nargs=len(SPLITS), default=DEFAULT_RATIOS,
                        metavar=tuple(r.upper() for r in SPLITS), help="fractions for train, valid and test")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--copy", dest="copy", action="store_true", default=True, help="copy the files (default)")
    mode.add_argument("--move", dest="copy", action="store_false", help="move the files out of SOURCE")
    args = parser.parse_args(argv)
    try:
        splits = split(args.source, args.target, args.seed, args.ratios, args.copy)
    except (ValueError, OSError) as problem:
        print(f"Error: {problem}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{name} {len(paths)}" for name, paths in splits.items())
    print(f"{'copied' if args.copy else 'moved'} into {args.target}: {sizes}")
    return 0

