"""Freed activation-sized tensors go back to the OS (``harness.memory.return_freed_memory_to_os``).

Each case runs in a fresh interpreter (mallopt is process-wide): allocate 100 tensors of 6 MiB (above the fixed 4 MiB threshold), keep every
tenth one so the heap cannot be trimmed from its top, free the rest, and read the resident set. With
glibc's default dynamic mmap threshold (raised by freeing one larger block first, as a training step
does) the freed blocks stay resident; with the fixed threshold they are unmapped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys, psutil, torch
from harness.memory import return_freed_memory_to_os
applied = return_freed_memory_to_os()
proc = psutil.Process()
big = torch.ones(8 << 20, dtype=torch.uint8); del big          # an mmapped block freed: threshold rises
base = proc.memory_info().rss
blocks = [torch.ones(6 << 20, dtype=torch.uint8) for _ in range(100)]
kept = blocks[::10]; del blocks
print(json.dumps({"applied": applied, "grown_mb": (proc.memory_info().rss - base) / 2**20}))
"""


def _run(env_extra: dict[str, str]) -> dict:
    env = {**os.environ, **env_extra}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_tensors_leave_the_resident_set():
    fixed = _run({})
    default = _run({"ADAPTBENCH_MALLOC": "0"})
    assert fixed["applied"] is True and default["applied"] is False
    # 10 kept blocks = 60 MiB must stay; the 540 MiB freed must not (default glibc keeps most of it).
    assert fixed["grown_mb"] < 120, fixed
    assert default["grown_mb"] > 300, default


TRIM_SCRIPT = r"""
import json, psutil, torch
from harness.memory import release_free_heap
proc = psutil.Process()
big = torch.ones(8 << 20, dtype=torch.uint8); del big          # glibc's threshold rises: 6 MiB blocks use the heap
base = proc.memory_info().rss
blocks = [torch.ones(6 << 20, dtype=torch.uint8) for _ in range(60)]
kept = blocks[::10]; del blocks                                # the kept blocks pin the heap's top
before = proc.memory_info().rss
released = release_free_heap()
after = proc.memory_info().rss
print(json.dumps({"released": released, "before_mb": (before - base) / 2**20, "after_mb": (after - base) / 2**20}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_free_heap_pages_go_back_before_and_after_training():
    """Freed heap blocks between live ones stay resident until ``malloc_trim`` hands their pages back."""
    env = {**os.environ, "ADAPTBENCH_MALLOC": "0"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run(
        [sys.executable, "-c", TRIM_SCRIPT], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # 6 kept blocks = 36 MiB stay; of the 324 MiB freed, glibc keeps most resident until trimmed.
    assert got["released"] is True and got["before_mb"] > 200, got
    assert got["after_mb"] < 100, got
