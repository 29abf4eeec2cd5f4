"""tools/setup.sh picks the torch build: CPU index without an NVIDIA GPU (default index when that index is
unreachable), the default (CUDA) index with one; progress shown on the big download; `dsm kernels` at the end.

``nvidia-smi`` is a fake on PATH (one that lists a GPU, one that fails as without a driver); the fallback runs the
script for real with a fake ``PYTHON`` that logs its pip commands and fails the CPU-index one. Nothing is installed.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
GPU_SMI = "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n"
NO_DRIVER_SMI = ("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'"
                 "\nexit 9\n")
# A python3 without torch whose pip cannot reach the CPU index; every call is logged.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "-c import torch") exit 1 ;;
  *download.pytorch.org*) echo "ERROR: Could not find a version that satisfies the requirement" >&2; exit 1 ;;
esac
exit 0
"""


def _script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _setup(tmp_path: Path, smi: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _script(bin_dir, "nvidia-smi", smi)
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(REPO_ROOT / "tools" / "setup.sh"), *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


def _pip_lines(out: str) -> list[str]:
    return [line.removeprefix("+ ") for line in out.splitlines() if line.startswith("+ ") and " -m pip " in line]


def test_no_gpu_gets_the_cpu_wheel_with_progress(tmp_path):
    done = _setup(tmp_path, NO_DRIVER_SMI, DSM_SETUP_DRY_RUN="1")
    assert done.returncode == 0, done.stderr
    torch_line = _pip_lines(done.stdout)[0]
    assert torch_line == f"python3 -m pip install --timeout 5 --retries 0 --index-url {CPU_INDEX} torch==2.13.0"
    assert " -q" not in torch_line  # the big download shows its progress
    assert "no NVIDIA GPU" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "+ python3 -m dsmcli kernels"


def test_gpu_gets_the_default_cuda_wheel(tmp_path):
    done = _setup(tmp_path, GPU_SMI, DSM_SETUP_DRY_RUN="1")
    assert done.returncode == 0, done.stderr
    assert _pip_lines(done.stdout)[:2] == ["python3 -m pip install torch==2.13.0",
                                           "python3 -m pip install -q -e .[live]"]
    assert "NVIDIA GPU found" in done.stdout


def test_test_mode_installs_the_test_extras(tmp_path):
    done = _setup(tmp_path, NO_DRIVER_SMI, "--test", DSM_SETUP_DRY_RUN="1")
    assert done.returncode == 0, done.stderr
    assert _pip_lines(done.stdout)[1:] == ["python3 -m pip install -q -e .[test,ray]",
                                          "python3 -m pip install -q --no-deps moshi==0.2.13"]


def test_unreachable_cpu_index_falls_back_to_the_default_index(tmp_path):
    log = tmp_path / "calls.log"
    fake = _script(tmp_path, "python3", FAKE_PYTHON)
    done = _setup(tmp_path, NO_DRIVER_SMI, PYTHON=str(fake), FAKE_LOG=str(log))
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "-c import torch",
        f"-m pip install --timeout 5 --retries 0 --index-url {CPU_INDEX} torch==2.13.0",
        "-m pip install torch==2.13.0",
        "-m pip install -q -e .[live]",
        "-m dsmcli kernels",
    ]
    assert f"{CPU_INDEX} not reachable: torch from the default index instead" in done.stdout


@pytest.mark.parametrize("smi", [GPU_SMI, NO_DRIVER_SMI])
def test_installed_torch_is_kept(tmp_path, smi):
    log = tmp_path / "calls.log"
    fake = _script(tmp_path, "python3", FAKE_PYTHON.replace('"-c import torch") exit 1', '"-c import torch") exit 0'))
    done = _setup(tmp_path, smi, PYTHON=str(fake), FAKE_LOG=str(log))
    assert done.returncode == 0, done.stderr
    assert not any("torch==" in line for line in log.read_text().splitlines())
