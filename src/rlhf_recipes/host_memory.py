"""Host-memory settings for a training process: keep the memory a step frees for the next step (glibc malloc).

PyTorch takes CPU tensor memory from `malloc`. glibc gives the top of its heap back to the OS once more than
`M_TRIM_THRESHOLD` of it is free, and serves any block of `M_MMAP_THRESHOLD` or more with a fresh `mmap`. Both
thresholds start at 128 KiB and only grow as glibc sees large blocks freed (to at most 32 MiB / 64 MiB). A training
step allocates and frees the same few large tensors (activations, logits, gradients) every time, so under the
starting thresholds each step returns that memory and faults it back in page by page: kernel time on every step.
On the demo model on a CPU this was 5,000-15,000 page faults per step, 15-55 ms of a ~150 ms step, and how many
depended on where earlier allocations (loading, data preparation) had left the thresholds and the heap, so it
changed from run to run. Starting at glibc's own ceilings keeps the steady state allocation-free.

Only glibc is touched; settings made through `GLIBC_TUNABLES=glibc.malloc.*` or `MALLOC_*_` variables are kept.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 32 * 2**20  # the most glibc allows, and the ceiling of its own dynamic threshold (64-bit)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # glibc's dynamic rule keeps trim = 2 x mmap threshold
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from <malloc.h>
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _glibc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):  # not Linux/glibc (macOS, Windows, musl)
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process; True when they were set.

    Call once at the start of a training process. Memory freed by one step stays in the process for the next one
    instead of being returned to the OS and faulted in again; the cost is at most `TRIM_THRESHOLD` of free heap
    kept after the peak.
    """
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user chose the allocator's settings
    libc = _glibc()
    if libc is None:
        return False
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_set and trim_set
