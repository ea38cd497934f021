"""Threads from what the machine can give (`core.free_cpus`, `core.cpu_share`): a competing CPU-bound process is seen,
and the monitor's thread count is restored after it measures."""
import subprocess, sys, time

import torch

from safety_compass.core import cpu_share, free_cpus, _running_others


def test_a_competing_process_is_seen():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert _running_others() >= 1              # the spin loop is always runnable
        cpus = len(__import__("os").sched_getaffinity(0))
        assert free_cpus() <= max(1, cpus - 1)
        before = torch.get_num_threads()
        with cpu_share() as n: assert n <= max(1, cpus - 1) and torch.get_num_threads() == min(before, n)
        assert torch.get_num_threads() == before
    finally:
        spin.kill(); spin.wait()

