"""Give back the memory pages of a tensor that was read from a memory-mapped checkpoint and is no longer needed.

A memory-mapped states file is read page by page as its tensors are used, and every page read stays in the
process (and counts in its RSS) while any tensor of the file lives: the vision towers, kept as they are, hold the
mapping for the whole run. Quantising while loading reads each language weight once; after that, its pages are
only a second copy of the weight, so they are handed back to the kernel. MADV_PAGEOUT drops clean file pages
and at worst swaps out anonymous ones: it never loses data, whatever the tensor's memory is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import torch

MADV_PAGEOUT = 21               # linux/mman.h, Linux >= 5.4


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


_LIBC = _libc()


def release_pages(tensor: torch.Tensor) -> bool:
    """Advise the kernel to page out the whole pages inside `tensor`'s storage. True if it was asked (Linux,
    CPU tensor); an older kernel that does not know the advice ignores it (the call fails, nothing changes)."""
    if _LIBC is None or tensor.device.type != "cpu":
        return False
    storage = tensor.untyped_storage()
    start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE       # whole pages only: neighbours keep theirs
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return False
    _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_PAGEOUT)
    return True
