"""The allocator setting of a process that holds a training set: large arrays go back to the system once freed."""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h> parameter number for mallopt
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own initial threshold, kept fixed


def fix_mmap_threshold(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold_bytes` for this process; True when set, False where the C library
    has no `mallopt` (not glibc, e.g. macOS), where nothing changes.

    glibc serves an allocation of at least the threshold with its own mmap, returned to the system when freed. By
    default the threshold is dynamic: freeing an mmapped block of up to 32 MB raises it to that block's size
    (mallopt(3), "M_MMAP_THRESHOLD"), so the next arrays of a few MB come from the heap, and their memory stays with
    the process after they are freed when a smaller, longer-lived block sits above them. A fixed threshold (setting
    it turns the dynamic adjustment off) keeps each large array in its own mapping. The train stage's peak RSS at 1M
    rows fell from 1,318 MB to 1,106 MB (bench/scale_bench.py sizes; the same as MALLOC_MMAP_THRESHOLD_=131072).

    Written with ctypes because neither the standard library nor a maintained package exposes mallopt; the
    environment variable would have to be set before the process starts, and DVC starts the stage.
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes))
