"""Give back the pages of a tensor read from a memory-mapped checkpoint file once it is no longer needed.

A memory-mapped states file is read page by page as its tensors are used, and every page read stays in the
process (and counts in its RSS) while the mapping lives: the vision towers, kept as they are, hold it for the whole
run. Quantising while loading reads each language weight once; after that its pages are a second copy of the
weight, so they are dropped (MADV_DONTNEED). That is only safe on pages of a private mapping of the file itself,
which the kernel reads again from the file if they are ever touched; on anonymous memory it would zero live data.
So a range is released only when /proc/self/maps shows it inside a mapping of that file. (MADV_PAGEOUT, safe on
any memory, leaves these pages resident on this kernel: measured, RSS unchanged.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
from pathlib import Path

import torch

MADV_DONTNEED = 4               # linux/mman.h
PROC_MAPS = Path("/proc/self/maps")


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


_LIBC = _libc()


def file_mappings(path: str | os.PathLike) -> list[tuple[int, int]]:
    """(start, end) of every mapping of `path` in this process ([] where /proc/self/maps does not exist)."""
    if _LIBC is None or not PROC_MAPS.exists():
        return []
    target = os.path.realpath(path)
    ranges = []
    for line in PROC_MAPS.read_text().splitlines():
        fields = line.split(maxsplit=5)             # start-end perms offset dev inode [path]
        if len(fields) == 6 and fields[5] == target:
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def release_pages(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> bool:
    """Drop the whole pages of `tensor`'s storage if they lie in one of `mappings` (see file_mappings); True if
    they were dropped. The tensor must not be used afterwards for anything but reading (which reads the file)."""
    if tensor.device.type != "cpu" or not mappings:
        return False
    storage = tensor.untyped_storage()
    start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    if not any(low <= start and end <= high for low, high in mappings):
        return False
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE       # whole pages only: neighbours keep theirs
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return False
    return _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED) == 0
