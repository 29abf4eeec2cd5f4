"""Native CPU kernels, compiled on first use with torch's C++ extension builder: the build machinery (:class:`Kernel`,
the build cache, the failed-build marker, ``dsm kernels``) and :func:`load_op`, which the per-family dispatch modules
call. A call site asks its family's module for an op, passing the :class:`KernelChoice` it was given and whether its
tensors fit the kernel; it gets the op or None (then it takes its pure-torch path):

* :mod:`dsmcli.kernels.linear`: ``int8_linear_op`` (``int8_linear.cpp``, the LM's int8 weights), ``int4_linear_op``
  (``int4_linear.cpp``, its 4-bit weights), ``fp32_linear_op`` (``fp32_linear.cpp``, a few float32 rows against a
  large float32 weight: Mimi's streaming steps, the depformer).
* :mod:`dsmcli.kernels.attention`: ``decode_attention_op`` (``decode_attention.cpp``, one query step per slot and
  head over a float32 or float16 KV ring: the quantized LM's attention) and ``ring_write_op`` (a step's keys and
  values into such a ring).
* :mod:`dsmcli.kernels.codec`: ``seanet_step_op`` (``seanet_step.cpp``, a whole streaming step of SEANet),
  ``mimi_transformer_op`` (``mimi_transformer.cpp``, a whole streaming step of Mimi's transformer) and
  ``rvq_encode_op`` (``fp32_linear.cpp``, Mimi's residual quantizer).
* :mod:`dsmcli.kernels.depformer`: ``depformer_step_op`` and ``depformer_frame_op`` (``depformer_step.cpp``, one
  depformer sub-step, or all the sub-steps of a main step with their sampling, in one call).

None means the kernel does not apply or cannot be built here (no C++ compiler, Python headers or ninja, an
unsupported platform): callers then take a slower pure-torch path with the same numerics up to float rounding. A
build goes to ``$XDG_CACHE_HOME/dsmcli/kernels`` (default ``~/.cache/dsmcli/kernels``), keyed by the source (its
text and its path), the torch version and the CPU flags, so it happens once per machine and install (~15 s each).
``dsm kernels`` (:func:`build_all`, run by ``tools/setup.sh``) builds them all ahead; a build at run time says so
in one line of the ``dsmcli`` logger (:mod:`dsmcli.logs`: ``dsm: ...`` on stderr by default). A failed build is remembered beside the build (``<name>-<key>.failed``: the reason and the
compiler's output) and not retried until ``dsm kernels``; it is reported in one warning per process, with the
remedy.

Which kernels run is an explicit :class:`KernelChoice` carried by the objects that run them, never process-wide
state: ``EngineOptions.kernels`` (the LM's streams), ``CodecOptions.kernels`` (Mimi), the ``kernels`` argument of
``load_lm`` / ``quantize_lm`` (quantized weights); the commands pass ``--kernels auto|native|torch`` down to them.
``auto`` (the default) uses a kernel when it builds and falls back to torch otherwise; ``native`` makes a kernel
that cannot be built an error (:class:`KernelUnavailable`); ``torch`` uses none. ``DSM_NO_NATIVE_KERNELS=1`` is a
documented override meaning ``torch`` whatever the choice (with ``native``: an error).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import sysconfig
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from dsmcli.errors import DsmError
from dsmcli.logs import get_logger

log = get_logger(__name__)
DISABLE_ENV = "DSM_NO_NATIVE_KERNELS"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]  # at::parallel_for is inlined: needs OpenMP here
LDFLAGS = ["-fopenmp"]
REMEDY = ("install a C++ compiler and the Python headers (e.g. `apt install g++ python3-dev`) and run `dsm kernels`, "
          f"or set {DISABLE_ENV}=1")
_warned_failure = False  # one failure line per process: the kernels share their toolchain, so their cause


class KernelChoice(str, Enum):
    """Which implementation the native-kernel call sites use (see the module docstring)."""

    AUTO = "auto"
    NATIVE = "native"
    TORCH = "torch"


class KernelUnavailable(DsmError):
    """``--kernels native`` and a kernel that cannot be built (or ``DSM_NO_NATIVE_KERNELS`` is set): exit 1."""


def check_choice(choice: KernelChoice | str) -> KernelChoice:
    """``choice`` as a :class:`KernelChoice`; :class:`KernelUnavailable` for ``native`` while
    ``DSM_NO_NATIVE_KERNELS`` is set (a command checks its ``--kernels`` before loading anything)."""
    choice = KernelChoice(choice)
    if choice is KernelChoice.NATIVE and disabled():
        raise KernelUnavailable(f"--kernels native conflicts with {DISABLE_ENV}=1")
    return choice


def effective_choice(choice: KernelChoice | str) -> KernelChoice:
    """The choice in effect: ``torch`` while ``DSM_NO_NATIVE_KERNELS`` is set (``native`` then raises)."""
    choice = check_choice(choice)
    return KernelChoice.TORCH if disabled() else choice


@dataclass(frozen=True)
class Kernel:
    """One native library: ``torch.ops.<library>.<op>`` built from ``source_name``; ``what`` falls back to torch."""

    library: str
    source_name: str
    what: str
    op: str

    @property
    def name(self) -> str:
        return Path(self.source_name).stem

    @property
    def source(self) -> Path:
        return Path(__file__).with_name(self.source_name)

    @property
    def build_dir(self) -> Path:
        return cache_dir() / f"{self.name}-{_build_key(self.source)}"

    @property
    def failed_marker(self) -> Path:
        """Written when a build fails (the reason and torch's output): later runs do not retry until
        ``dsm kernels``."""
        return self.build_dir.with_name(self.build_dir.name + ".failed")

    @property
    def library_file(self) -> Path:
        return self.build_dir / f"{self.library}.so"

    @property
    def is_built(self) -> bool:
        return self.library_file.is_file()


KERNELS = {k.name: k for k in (
    Kernel("dsmcli_int8", "int8_linear.cpp", "int8", "linear"),
    Kernel("dsmcli_int4", "int4_linear.cpp", "int4", "linear"),
    Kernel("dsmcli_fp32", "fp32_linear.cpp", "Mimi streaming", "linear"),
    Kernel("dsmcli_mimi", "mimi_transformer.cpp", "Mimi streaming", "transformer_step"),
    Kernel("dsmcli_seanet", "seanet_step.cpp", "Mimi streaming", "step"),
    Kernel("dsmcli_attn", "decode_attention.cpp", "int8 attention", "decode"),
    Kernel("dsmcli_depformer", "depformer_step.cpp", "the depformer", "step"),
)}


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "dsmcli" / "kernels"


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so a home directory shared by different CPUs keeps one build per CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def _build_key(source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):  # the shared headers the sources include
        digest.update(header.read_bytes())
    digest.update(f"{torch.__version__}|{platform.machine()}|{_cpu_flags()}|{sys.version_info[:2]}|{CFLAGS}".encode())
    # the build files name the source by its path: two checkouts sharing one build rebuilt it on every switch
    digest.update(str(source.resolve()).encode())
    return digest.hexdigest()[:16]


def _missing_toolchain() -> str | None:
    """Why nothing can be built here (no compiler, headers or ninja), or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler} not found)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return f"no Python headers ({sysconfig.get_paths()['include']}/Python.h not found)"
    if shutil.which("ninja") is None and not _ninja_module():
        return "ninja not found"
    return None


def _ninja_module() -> bool:
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
        return True
    except RuntimeError:
        return False


def _compile(kernel: Kernel) -> None:
    """torch's extension builder, quiet: its compiler-check banner and warnings are not for dsm's users."""
    from torch.utils.cpp_extension import load

    kernel.build_dir.mkdir(parents=True, exist_ok=True)
    builder_log = logging.getLogger("torch.utils.cpp_extension")
    level = builder_log.level
    builder_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load(name=kernel.library, sources=[str(kernel.source)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                 build_directory=str(kernel.build_dir), is_python_module=False, verbose=False)
    finally:
        builder_log.setLevel(level)


def _remember_failure(kernel: Kernel, reason: str, details: str) -> None:
    try:
        kernel.failed_marker.parent.mkdir(parents=True, exist_ok=True)
        kernel.failed_marker.write_text(f"{reason}\n\n{details}\n", encoding="utf-8")
    except OSError:
        pass


def _report_failure(kernel: Kernel, reason: str) -> None:
    global _warned_failure
    if _warned_failure:
        return
    _warned_failure = True
    log.warning("native kernel %s not built (%s); %s runs on a slower pure-torch path: %s", kernel.name, reason,
                kernel.what, REMEDY)


def _op(kernel: Kernel) -> Callable | None:
    try:
        return getattr(getattr(torch.ops, kernel.library), kernel.op)
    except (AttributeError, RuntimeError):
        return None


def _load_built(kernel: Kernel) -> Callable | None:
    """The op of a library built before (the build key pins its source, torch and flags): loaded directly, without
    torch's builder (which runs ninja and the compiler's version check, so needs the toolchain, on every run)."""
    try:
        torch.ops.load_library(str(kernel.library_file))
    except (OSError, RuntimeError):
        return None  # e.g. a build interrupted while linking: build it again
    return _op(kernel)


def build(kernel: Kernel, retry: bool = False, announce: bool = True) -> tuple[Callable | None, str | None]:
    """Load ``kernel`` (building it first if needed): ``(op, None)``, or ``(None, reason)``.

    A failed build is remembered on disk and not retried unless ``retry``; ``announce`` logs one line
    before a build (the first run of a command that needs a kernel would otherwise sit silent ~15 s)."""
    if (op := _op(kernel)) is not None:  # already loaded in this process (a library registers once)
        return op, None
    if kernel.is_built and (op := _load_built(kernel)) is not None:
        return op, None
    if kernel.failed_marker.is_file() and not retry:
        reason = kernel.failed_marker.read_text(encoding="utf-8", errors="replace").partition("\n")[0]
        return None, f"{reason}; remembered in {kernel.failed_marker}"
    if (reason := _missing_toolchain()) is not None:
        _remember_failure(kernel, reason, "")
        return None, reason
    if announce and not kernel.is_built and not _warned_failure:  # after a failure here, the next ones are quiet
        log.info("building native kernel %s (one time, ~15 s)...", kernel.name)
    try:
        _compile(kernel)
    except Exception as error:  # noqa: BLE001 - any build failure means: use the portable path
        text = str(error).strip()
        reason = f"build failed: {text.splitlines()[0][:120].rstrip('.') if text else type(error).__name__}"
        _remember_failure(kernel, reason, text)
        return None, f"{reason}; details in {kernel.failed_marker}"
    kernel.failed_marker.unlink(missing_ok=True)
    return _op(kernel), None


_loaded: dict[tuple[str, str | None], Callable] = {}  # (kernel, op) -> op, once built or loaded in this process
_unavailable: dict[str, str] = {}  # kernel name -> why it cannot be built (asked once per process)


def load_op(name: str, choice: KernelChoice | str, fits: bool = True, op: str | None = None) -> Callable | None:
    """The op ``op`` (default: the kernel's main op) of ``KERNELS[name]`` for a call site running under ``choice``
    whose tensors ``fits`` the kernel, or None (``torch``, not fitting, or not buildable under ``auto``: one logged
    warning per process). ``native`` and a kernel that cannot be built: :class:`KernelUnavailable`. Cheap once the op
    is loaded: call sites look it up at every step."""
    if not fits or choice == KernelChoice.TORCH:
        return None
    if disabled():
        check_choice(choice)  # native: an error
        return None
    found = _loaded.get((name, op))
    return found if found is not None else _load_new(name, KernelChoice(choice), op)


def _load_new(name: str, choice: KernelChoice, op: str | None) -> Callable | None:
    kernel = KERNELS[name]
    reason = _unavailable.get(name)
    if reason is None:
        main, reason = build(kernel)
        if main is not None:
            found = main if op is None else getattr(getattr(torch.ops, kernel.library), op)
            _loaded[name, op] = found
            return found
        reason = _unavailable[name] = reason or "unknown reason"
        if choice is not KernelChoice.NATIVE:
            _report_failure(kernel, reason)
    if choice is KernelChoice.NATIVE:
        raise KernelUnavailable(f"--kernels native: the {kernel.name} kernel cannot be built: {reason}")
    return None


@dataclass(frozen=True)
class BuildReport:
    """What ``dsm kernels`` did for one kernel: ``state`` is built, cached, failed, disabled or missing."""

    name: str
    state: str
    seconds: float = 0.0
    reason: str | None = None


def build_all(status_only: bool = False) -> list[BuildReport]:
    """:func:`build_report` of every kernel, in order."""
    return [build_report(kernel, status_only) for kernel in KERNELS.values()]


def build_report(kernel: Kernel, status_only: bool = False) -> BuildReport:
    """Build ``kernel`` unless it is built, retrying a remembered failure (``dsm kernels``); ``status_only``
    builds nothing and reports what is on disk."""
    if disabled():
        return BuildReport(kernel.name, "disabled", reason=f"{DISABLE_ENV} is set")
    if status_only:
        return _status(kernel)
    was_built, started = kernel.is_built, time.perf_counter()
    op, reason = build(kernel, retry=True, announce=False)  # a cached one is loaded too: proves it is usable
    state = "failed" if op is None else "cached" if was_built else "built"
    return BuildReport(kernel.name, state, time.perf_counter() - started, reason)


def _status(kernel: Kernel) -> BuildReport:
    if kernel.is_built:
        return BuildReport(kernel.name, "cached")
    if kernel.failed_marker.is_file():
        reason = kernel.failed_marker.read_text(encoding="utf-8", errors="replace").partition("\n")[0]
        return BuildReport(kernel.name, "failed", reason=f"{reason}; remembered in {kernel.failed_marker}")
    return BuildReport(kernel.name, "missing")
