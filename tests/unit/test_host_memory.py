"""glibc keeps the memory a training step frees, instead of faulting it in again on the next step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rlhf_recipes import host_memory
from rlhf_recipes.host_memory import keep_freed_memory

glibc_only = pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's")


KEPT_AFTER_A_STEP = """
import ctypes, torch
from rlhf_recipes.host_memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
assert keep_freed_memory()
for _ in range(2):  # a training step in miniature: three 8 MiB temporaries alive together, then all freed
    held = [torch.ones(8 * 2**20 // 4) for _ in range(3)]
    sum(t.sum() for t in held)
    del held
print(libc.mallinfo2().fordblks)
"""


@glibc_only
def test_memory_freed_by_a_step_stays_in_the_process_for_the_next():
    """The step's 24 MiB stay as free heap inside the process (not unmapped or trimmed back to the OS), so the
    next step reuses them instead of faulting them in page by page.

    Asserted on glibc's own accounting in a fresh process, not on page-fault counts: those also move with the
    kernel reclaiming idle pages and with the heap earlier tests left, and were flaky here.
    """
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and k not in host_memory._USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", KEPT_AFTER_A_STEP], env=env, capture_output=True, text=True,
                         check=True)
    assert int(out.stdout.split()[-1]) >= 24 * 2**20


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "0"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_the_users_allocator_settings_are_kept(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert not keep_freed_memory()
