"""glibc keeps the memory a training step frees, instead of faulting it in again on the next step."""

from __future__ import annotations

import resource

import pytest
import torch

from rlhf_recipes import host_memory
from rlhf_recipes.host_memory import keep_freed_memory

glibc_only = pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's")


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _step(tensors: int = 3, mib: int = 8) -> None:
    """A training step in miniature: a few large temporaries alive together, then all freed."""
    held = [torch.ones(mib * 2**20 // 4) for _ in range(tensors)]
    sum(t.sum() for t in held)


@glibc_only
def test_memory_freed_by_a_step_is_reused_by_the_next_without_page_faults(monkeypatch):
    for name in ("GLIBC_TUNABLES", *host_memory._USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory()
    for _ in range(2):
        _step()  # the heap grows to the step's peak once
    before = _minor_faults()
    for _ in range(5):
        _step()
    # Returned to the OS after each step, the 24 MiB would be faulted in again: 5 x 6144 pages.
    assert _minor_faults() - before < 2048


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "0"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_the_users_allocator_settings_are_kept(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert not keep_freed_memory()
