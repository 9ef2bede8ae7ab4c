"""glibc allocator settings for CPU training: freed tensor memory goes back to the OS instead of staying resident.

The training loop (`training/loop.py`) caps glibc's mmap threshold for training, lifts it for validation and trims the
heap every few batches; each is a no-op without glibc. `benchmarks/allocator.py` measures the settings.
"""

import ctypes
import ctypes.util
import functools
import os
from contextlib import contextmanager

RELEASE_MEMORY_EVERY = 16  # batches
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 4 * 1024 * 1024  # bytes; see cap_mmap_threshold
EVALUATION_MMAP_THRESHOLD = 32 * 1024 * 1024  # bytes, glibc's largest dynamic threshold; see evaluation_allocator


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def cap_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of `nbytes` and more with their own mapping, returned to the OS when freed (glibc's
    `mallopt(M_MMAP_THRESHOLD)`; a no-op without glibc, or when the user set `MALLOC_MMAP_THRESHOLD_`).

    glibc's default threshold grows to the size of every large block freed (up to 32 MiB), after which a training
    step's FFN activations (256 x 50 x 256 floats, 13 MB) stay in the heap and keep it large. Tensors under 4 MiB
    (most activations) still reuse heap pages; a 1 MiB threshold mapped those too and made epochs 1.6-2.2x slower.
    Returns True when the threshold was set."""
    libc = _libc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return libc.mallopt(M_MMAP_THRESHOLD, nbytes) == 1


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the OS (glibc's `malloc_trim`; a no-op without glibc).

    Batches of changing shapes leave freed tensor memory scattered over glibc's heap, where it still counts as
    resident. With a call every `RELEASE_MEMORY_EVERY` batches, Q-Bert4Rec's peak RSS over a full Beauty pretraining
    and fine-tuning epoch fell from 1,779 to 1,299 MiB (`benchmarks/speed.py`)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@contextmanager
def evaluation_allocator():
    """Evaluate under glibc's mmap threshold of an uncapped process (32 MiB), then return to the training cap and trim
    the heap.

    Under the 4 MiB cap (which also fixes glibc's trim threshold at 128 KiB) an evaluation batch's large activations
    (512 histories: up to 26 MB per FFN tensor) are mapped, or trimmed off the heap, and page-faulted afresh each
    time: all Beauty users took 1.21 s against 0.93-1.05 s uncapped (`speed.py`). Training's memory is
    not touched: the cap is back before the next batch, and the trim returns what evaluation left in the heap."""
    capped = cap_mmap_threshold(EVALUATION_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if capped:
            cap_mmap_threshold()
        release_freed_memory()
