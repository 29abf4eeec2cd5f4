"""CPU threading defaults of the `dsm` command, applied before torch is imported.

torch's CPU ops, MKL and the native kernels (``at::parallel_for``) all run on one OpenMP pool (torch's
``libgomp``). With the runtime's default wait policy a thread that finishes its share of a parallel op spins
waiting for the others; on a machine whose cores are busy with another job the thread it waits for is
descheduled, and the spinning steals the time it needs: measured on a 2-core VM, a tiny-model transcription took
107-137 s with 2 threads vs 15 s with 1 (and 375 s with the native kernels off: torch's own ops suffer more).
A passive policy (waiting threads sleep at once) took 14-29 s under the same load, within the noise of one
thread, so it is the default. ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set by the user win, and ``--threads``
still picks the count (default: torch's, one per physical core).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

USER_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
DEFAULT_WAIT_POLICY = "PASSIVE"


def apply_wait_policy(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; True when set. Only effective before
    torch (its OpenMP runtime reads the variable once, when it is loaded)."""
    if any(var in environ for var in USER_POLICY_VARS):
        return False
    environ["OMP_WAIT_POLICY"] = DEFAULT_WAIT_POLICY
    return True


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op thread count (None keeps torch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
