"""Native CPU kernels, compiled on first use with torch's C++ extension builder.

``int8_linear_op()`` returns ``torch.ops.dsmcli_int8.linear`` (see ``int8_linear.cpp``) or None when it cannot be
built here (no C++ compiler or ninja, an unsupported platform): callers then take a slower pure-torch path with
the same numerics up to float rounding. The build goes to ``$XDG_CACHE_HOME/dsmcli/kernels`` (default
``~/.cache/dsmcli/kernels``), keyed by the source, the torch version and the CPU flags, so it happens once per
machine (~15 s). ``DSM_NO_NATIVE_KERNELS=1`` disables native kernels.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("int8_linear.cpp")
DISABLE_ENV = "DSM_NO_NATIVE_KERNELS"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]  # at::parallel_for is inlined: needs OpenMP here
LDFLAGS = ["-fopenmp"]


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "dsmcli" / "kernels"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so a home directory shared by different CPUs keeps one build per CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_key() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(f"{torch.__version__}|{platform.machine()}|{_cpu_flags()}|{sys.version_info[:2]}|{CFLAGS}".encode())
    return digest.hexdigest()[:16]


@functools.cache
def int8_linear_op() -> Callable | None:
    """The compiled ``linear(x [M, K] f32, w [N, K] i8, scales [N, G] f32, wsum [N, G] i32, group_size) -> [M, N]``
    op, or None (the reason is printed once on stderr)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    try:
        return torch.ops.dsmcli_int8.linear  # already loaded in this process (a library registers only once)
    except (AttributeError, RuntimeError):
        pass
    try:
        from torch.utils.cpp_extension import load

        build = cache_dir() / f"int8_linear-{_build_key()}"
        build.mkdir(parents=True, exist_ok=True)
        load(name="dsmcli_int8", sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS, build_directory=str(build),
             is_python_module=False, verbose=False)
        return torch.ops.dsmcli_int8.linear
    except Exception as error:  # noqa: BLE001 - any build failure means: use the portable path
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"dsm: warning: native int8 kernel unavailable ({reason[:200]}); int8 runs on a slower "
              f"pure-torch path", file=sys.stderr, flush=True)
        return None
