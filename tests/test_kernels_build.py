"""Native kernel builds: `dsm kernels`, the one-line notice of a run-time build, and remembered failures.

Each subprocess gets its own ``XDG_CACHE_HOME`` (a fresh build cache) unless it checks the user's cache; a broken
toolchain is simulated with ``CXX=/bin/false`` (a compiler that exists and fails) or a compiler path that does not
exist.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

from dsmcli import kernels

REPO_ROOT = Path(__file__).resolve().parents[1]
LOAD_TWO = ("from dsmcli.kernels.codec import seanet_step_op; from dsmcli.kernels.linear import fp32_linear_op; "
            "print(fp32_linear_op('auto') is None, seanet_step_op('auto') is None)")


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=subprocess_env(env), timeout=600)


def _markers(cache: Path) -> list[Path]:
    return sorted((cache / "dsmcli" / "kernels").glob("*.failed"))


def test_failed_build_is_remembered_and_reported_in_one_line(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path), "CXX": "/bin/false"}
    first = _python(LOAD_TWO, env)
    assert first.returncode == 0 and first.stdout.split() == ["True", "True"], first.stderr
    lines = first.stderr.strip().splitlines()
    assert lines[0] == "dsm: building native kernel fp32_linear (one time, ~15 s)...", first.stderr
    assert len(lines) == 2 and lines[1].startswith("dsm: warning: native kernel fp32_linear not built (build failed")
    for remedy in ("C++ compiler", "Python headers", "dsm kernels", "DSM_NO_NATIVE_KERNELS=1"):
        assert remedy in lines[1]
    assert "WARNING" not in first.stderr  # torch's compiler-check banner
    markers = _markers(tmp_path)
    assert [m.name.split("-")[0] for m in markers] == ["fp32_linear", "seanet_step"]
    stamps = [m.stat().st_mtime_ns for m in markers]

    again = _python(LOAD_TWO, env)  # remembered: no build, no "building" line, the same one warning
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "remembered in" in lines[0] and "DSM_NO_NATIVE_KERNELS=1" in lines[0], again.stderr
    assert [m.stat().st_mtime_ns for m in _markers(tmp_path)] == stamps


def test_missing_compiler_is_named(tmp_path):
    done = _python(LOAD_TWO, {"XDG_CACHE_HOME": str(tmp_path), "CXX": str(tmp_path / "no-such-c++")})
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no C++ compiler ({tmp_path / 'no-such-c++'} not found)" in lines[0], done.stderr


def test_disabled_kernels_say_nothing(tmp_path):
    done = _python(LOAD_TWO, {"XDG_CACHE_HOME": str(tmp_path), "CXX": "/bin/false", kernels.DISABLE_ENV: "1"})
    assert done.stdout.split() == ["True", "True"] and done.stderr == ""
    assert _markers(tmp_path) == []


def test_kernels_command_reports_failures_and_retries_them(run_dsm, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path), "CXX": "/bin/false"}
    done = run_dsm("kernels", env=env)
    rows = [line.split()[:2] for line in done.stdout.decode().splitlines() if not line.endswith("building...")]
    assert done.returncode == 1 and rows == [[name, "failed:"] for name in kernels.KERNELS]
    assert done.stderr.decode().strip().splitlines()[-1].startswith(f"dsm: error: {len(kernels.KERNELS)} native kernel(s) not built")
    stamps = [m.stat().st_mtime_ns for m in _markers(tmp_path)]
    status = run_dsm("kernels", "--status", env=env)  # reports, builds nothing
    assert [line.split()[:2] for line in status.stdout.decode().splitlines()] == rows
    assert [m.stat().st_mtime_ns for m in _markers(tmp_path)] == stamps
    retried = run_dsm("kernels", env=env)  # the explicit command retries remembered failures
    assert [m.stat().st_mtime_ns for m in _markers(tmp_path)] != stamps and retried.returncode == 1


def test_run_time_build_is_announced_once_when_piped(tmp_path):
    code = ("from dsmcli.kernels.attention import decode_attention_op, ring_write_op; "
            "assert decode_attention_op('auto') is not None and ring_write_op('auto') is not None")
    first = _python(code, {"XDG_CACHE_HOME": str(tmp_path)})
    assert first.returncode == 0, first.stderr
    assert first.stderr == "dsm: building native kernel decode_attention (one time, ~15 s)...\n"
    # built: loaded as is, silently, without the toolchain (torch's builder would need it on every run)
    again = _python(code, {"XDG_CACHE_HOME": str(tmp_path), "CXX": str(tmp_path / "no-such-c++")})
    assert again.returncode == 0 and again.stderr == ""


def test_kernels_command_builds_everything(run_dsm):
    """In the user's build cache (tools/setup.sh has filled it: then this is quick)."""
    done = run_dsm("kernels")
    states = {line.split()[0]: line.split()[1] for line in done.stdout.decode().splitlines()
              if not line.endswith("building...")}
    assert done.returncode == 0, done.stderr.decode()
    assert set(states) == set(kernels.KERNELS) and set(states.values()) <= {"built", "cached"}
    status = run_dsm("kernels", "--status")
    assert [line.split()[1] for line in status.stdout.decode().splitlines()] == ["cached"] * len(kernels.KERNELS)


def test_an_edit_of_a_shared_header_rebuilds_the_kernels_that_include_it(tmp_path):
    """The build key hashes the headers beside the sources: an edit of ``attention.h`` (the attention loop shared by
    the decode attention and Mimi's transformer step) gives both kernels a new build."""
    names = ("decode_attention.cpp", "mimi_transformer.cpp", "attention.h", "streams.h", "fp32_product.h")
    source_dir = kernels.KERNELS["decode_attention"].source.parent
    for name in names:
        (tmp_path / name).write_bytes((source_dir / name).read_bytes())
    before = [kernels._build_key(tmp_path / name) for name in names[:2]]
    kernels._build_key.cache_clear()
    with (tmp_path / "attention.h").open("a", encoding="utf-8") as header:
        header.write("// edited\n")
    after = [kernels._build_key(tmp_path / name) for name in names[:2]]
    kernels._build_key.cache_clear()
    assert before[0] != after[0] and before[1] != after[1]
