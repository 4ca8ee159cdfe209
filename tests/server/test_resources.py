"""Container limits (cgroup v2 files) cap the CPUs and memory the server sizes itself by."""

from __future__ import annotations

import os

from jacserve.server.resources import available_cpus, available_memory_bytes

PHYSICAL = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_a_cpu_quota_caps_the_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a 1.5-CPU limit
    assert available_cpus(str(tmp_path)) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(str(tmp_path)) == len(os.sched_getaffinity(0))


def test_a_memory_limit_caps_the_memory(tmp_path):
    (tmp_path / "memory.max").write_text(f"{2 << 30}\n")
    assert available_memory_bytes(str(tmp_path)) == min(PHYSICAL, 2 << 30)
    (tmp_path / "memory.max").write_text("max\n")
    assert available_memory_bytes(str(tmp_path)) == PHYSICAL
