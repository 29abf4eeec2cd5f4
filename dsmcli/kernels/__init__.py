"""Native CPU kernels, compiled on first use with torch's C++ extension builder.

* ``int8_linear_op()``: ``torch.ops.dsmcli_int8.linear`` (``int8_linear.cpp``), the LM's int8 weights.
* ``int4_linear_op()``: ``torch.ops.dsmcli_int4.linear`` (``int4_linear.cpp``), the LM's 4-bit weights.
* ``fp32_linear_op()``: ``torch.ops.dsmcli_fp32.linear`` (``fp32_linear.cpp``), a few float32 rows against a
  large float32 weight (Mimi's streaming steps); ``rvq_encode_op()``: ``torch.ops.dsmcli_fp32.rvq_encode`` from
  the same file, Mimi's residual quantizer on that product.
* ``mimi_transformer_op()``: ``torch.ops.dsmcli_mimi.transformer_step`` (``mimi_transformer.cpp``), a whole
  streaming step of Mimi's transformer in one call.
* ``seanet_step_op()``: ``torch.ops.dsmcli_seanet.step`` (``seanet_step.cpp``), a whole streaming step of Mimi's
  SEANet encoder in one call.
* ``depformer_step_op()``: ``torch.ops.dsmcli_depformer.step`` (``depformer_step.cpp``), one depformer sub-step
  (its whole stack, output norm and head) in one call, on the linears above.
* ``decode_attention_op()``: ``torch.ops.dsmcli_attn.decode`` (``decode_attention.cpp``), one query step per slot
  and head over a float32 or float16 KV ring (the int8 LM's attention); ``ring_write_op()``:
  ``torch.ops.dsmcli_attn.write`` from the same file, a step's keys and values into such a ring.

Each returns None when it cannot be built here (no C++ compiler or ninja, an unsupported platform): callers then
take a slower pure-torch path with the same numerics up to float rounding. A build goes to
``$XDG_CACHE_HOME/dsmcli/kernels`` (default ``~/.cache/dsmcli/kernels``), keyed by the source (its text and its
path), the torch version and the CPU flags, so it happens once per machine and install (~15 s each).
``DSM_NO_NATIVE_KERNELS=1`` disables them.
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


def _build_key(source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):  # the shared headers the sources include
        digest.update(header.read_bytes())
    digest.update(f"{torch.__version__}|{platform.machine()}|{_cpu_flags()}|{sys.version_info[:2]}|{CFLAGS}".encode())
    # the build files name the source by its path: two checkouts sharing one build rebuilt it on every switch
    digest.update(str(source.resolve()).encode())
    return digest.hexdigest()[:16]


def _load(library: str, source_name: str, what: str, op: str = "linear") -> Callable | None:
    """``torch.ops.<library>.<op>`` built from ``source_name``, or None (the reason is printed once on stderr,
    naming ``what`` falls back)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    try:
        return getattr(getattr(torch.ops, library), op)  # already loaded in this process (a library registers once)
    except (AttributeError, RuntimeError):
        pass
    source = Path(__file__).with_name(source_name)
    try:
        from torch.utils.cpp_extension import load

        build = cache_dir() / f"{source.stem}-{_build_key(source)}"
        build.mkdir(parents=True, exist_ok=True)
        load(name=library, sources=[str(source)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
             build_directory=str(build), is_python_module=False, verbose=False)
        return getattr(getattr(torch.ops, library), op)
    except Exception as error:  # noqa: BLE001 - any build failure means: use the portable path
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"dsm: warning: native {source.stem} kernel unavailable ({reason[:200]}); {what} runs on a slower "
              f"pure-torch path", file=sys.stderr, flush=True)
        return None


@functools.cache
def int8_linear_op() -> Callable | None:
    """The compiled ``linear(x [M, K] f32, w [N, K] i8, scales [N, G] f32, wsum [N, G] i32, group_size) -> [M, N]``
    op, or None."""
    return _load("dsmcli_int8", "int8_linear.cpp", "int8")


@functools.cache
def int4_linear_op() -> Callable | None:
    """The compiled ``linear(x [M, K] f32, w [N, K / 2] u8 (packed nibbles), scales [N, G] f32, group_size)
    -> [M, N]`` op, or None."""
    return _load("dsmcli_int4", "int4_linear.cpp", "int4")


@functools.cache
def fp32_linear_op() -> Callable | None:
    """The compiled ``linear(x [M, K] f32, w [N, K] f32, bias [N] f32 | None) -> [M, N]`` op, or None."""
    return _load("dsmcli_fp32", "fp32_linear.cpp", "Mimi streaming")


@functools.cache
def rvq_encode_op() -> Callable | None:
    """The compiled ``rvq_encode(x [M, D] f32, tables [L, bins, D + 2] f32) -> codes [L, M] i64`` op, or None."""
    return None if fp32_linear_op() is None else torch.ops.dsmcli_fp32.rvq_encode


@functools.cache
def mimi_transformer_op() -> Callable | None:
    """The compiled ``transformer_step(x [B, T, d], active, weights, keys, values, positions, ends, offset, num_heads,
    context, max_period, eps) -> [B, T, d]`` op (see ``mimi_transformer.cpp``), or None."""
    return _load("dsmcli_mimi", "mimi_transformer.cpp", "Mimi streaming", "transformer_step")


@functools.cache
def seanet_step_op() -> Callable | None:
    """The compiled ``step(x [B, C, N], program, weights, biases, tails, strides, dilations, fresh, active, alpha)``
    op (see ``seanet_step.cpp``), or None."""
    return _load("dsmcli_seanet", "seanet_step.cpp", "Mimi streaming", "step")


@functools.cache
def depformer_step_op() -> Callable | None:
    """The compiled ``step(input [B, D], weights, kinds, group_sizes, keys, values, position, num_heads, eps,
    out_eps) -> logits [B, card]`` op (see ``depformer_step.cpp``), or None."""
    return _load("dsmcli_depformer", "depformer_step.cpp", "the depformer", "step")


@functools.cache
def decode_attention_op() -> Callable | None:
    """The compiled ``decode(q [B, H, 1, D], keys [B, H, C, D], values [B, H, C, D], mask [B, 1, 1, S] bool)
    -> [B, H, 1, D]`` op (all float32), or None."""
    return _load("dsmcli_attn", "decode_attention.cpp", "int8 attention", "decode")


@functools.cache
def ring_write_op() -> Callable | None:
    """The compiled ``write(keys [B, H, C, D], values, k [B, H, 1, D] f32, v, cells [B] i64)`` op (in place), or
    None."""
    return None if decode_attention_op() is None else torch.ops.dsmcli_attn.write
