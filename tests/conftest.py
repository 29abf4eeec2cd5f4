"""Shared test plumbing: an offline, private Hugging Face cache and the reference fixtures.

The environment is set *before* anything imports ``huggingface_hub`` (it reads its constants
at import time): every test runs offline, with ``HF_HOME`` in a session temp dir (never the
user's cache), and with the reference's ``torch.compile`` disabled.

Fixtures:
  * ``shared_data`` — ``../shared/data`` (bria.mp3, loona.mp3).
  * ``bria_24k(seconds)`` / ``loona_24k(seconds)`` — factories of float32 mono numpy at 24 kHz.
  * ``hf_cache`` — the session HF hub cache directory.
  * ``fixture_dir`` — the generated tiny repos (local-dir form), one folder per repo.
  * ``tiny_stt``, ``tiny_stt_prefix``, ``tiny_tts``, ``tiny_tts_prefix``, ``tiny_voices`` —
    repo ids (``dsm-test/...``) installed in the session HF cache.
  * ``real_mimi_path`` — a real-size random Mimi safetensors (cached across sessions).
  * ``run_dsm`` — ``python -m dsmcli ...`` in a subprocess with the test env (also importable:
    ``from conftest import run_dsm``).
  * ``torch_single_thread`` — one torch thread for a module (``SINGLE_THREAD_ENV`` for subprocesses).

``tools/`` is put on ``sys.path`` so tests can ``import make_fixtures`` (the reference builders).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="dsm-tests-"))
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
_HF_HOME = _SESSION_TMP / "hf_home"
_TEST_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NO_TORCH_COMPILE": "1",
    "HF_HOME": str(_HF_HOME),
    "HF_HUB_CACHE": str(_HF_HOME / "hub"),
}
os.environ.update(_TEST_ENV)
for _var in ("HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
    os.environ.pop(_var, None)

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = REPO_ROOT / "tools"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FIXTURES_ROOT = REPO_ROOT / "tests" / ".fixtures"
if str(TOOLS_DIR) not in sys.path:
    sys.path.insert(0, str(TOOLS_DIR))

from fixturelib.audio import speech_24k


def _check_hub_env() -> None:
    """Fail loudly if huggingface_hub was imported before this file could configure it."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE or Path(constants.HF_HUB_CACHE) != _HF_HOME / "hub":
        raise RuntimeError(
            "huggingface_hub was imported before tests/conftest.py set HF_HUB_OFFLINE/HF_HOME; "
            "remove the early import (a plugin or sitecustomize?)"
        )


_check_hub_env()


# --------------------------------------------------------------------------- shared data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repo (``bria.mp3``, ``loona.mp3``)."""
    if not (SHARED_DATA / "bria.mp3").is_file():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def _speech_factory(path: Path):
    def load(seconds: float | None = None, offset: float = 0.0) -> np.ndarray:
        """float32 mono ``[N]`` at 24 kHz; ``seconds=None`` means to the end of the file."""
        return speech_24k(path, seconds, offset)

    return load


@pytest.fixture(scope="session")
def bria_24k(shared_data: Path):
    """Factory ``bria_24k(seconds, offset=0.0)`` → float32 mono numpy at 24 kHz (decoded once)."""
    return _speech_factory(shared_data / "bria.mp3")


@pytest.fixture(scope="session")
def loona_24k(shared_data: Path):
    """Factory ``loona_24k(seconds, offset=0.0)`` → float32 mono numpy at 24 kHz (decoded once)."""
    return _speech_factory(shared_data / "loona.mp3")


# --------------------------------------------------------------------------- CLI helper


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tests run subprocesses with: offline, the session HF_HOME, no compile."""
    merged = dict(os.environ)
    merged.update(_TEST_ENV)
    if env:
        merged.update(env)
    return merged


def run_dsm(
    *args: str | os.PathLike[str],
    input: bytes | str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m dsmcli ARGS`` offline with the session HF cache.

    ``input`` (str is UTF-8 encoded) goes to stdin; stdout and stderr are captured as bytes.
    ``env`` entries override the test environment. Never raises on a non-zero exit code.
    """
    data = input.encode("utf-8") if isinstance(input, str) else input
    return subprocess.run(
        [sys.executable, "-m", "dsmcli", *map(str, args)],
        input=data,
        capture_output=True,
        env=subprocess_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def torch_single_thread() -> Iterator[None]:
    """One torch intra-op thread while a module runs (``pytestmark = pytest.mark.usefixtures(...)``).

    The tiny fixtures gain nothing from more threads, and on a busy 2-core machine two threads made a
    tiny STT step ~10x slower (measured 250-315 ms vs 26-33 ms per step). Subprocesses get the same with
    ``subprocess_env(SINGLE_THREAD_ENV)``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(name="run_dsm", scope="session")
def _run_dsm_fixture():
    """The ``run_dsm`` helper as a fixture."""
    return run_dsm


# --------------------------------------------------------------------------- reference fixtures

STALE_SECONDS = 3600.0  # older generations are pruned once nobody has touched them for this long


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Inter-process lock (several engineers / pytest runs share tests/.fixtures)."""
    from filelock import FileLock

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        yield


def _generate(args: list[str], what: str) -> None:
    """Run ``tools/make_fixtures.py ARGS`` in a subprocess (keeps torch threads / RNG of this process)."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(TOOLS_DIR / "make_fixtures.py"), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"generating {what} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    print(f"[conftest] generated {what} in {time.monotonic() - started:.1f} s", file=sys.stderr)


def _build_once(target: Path, args_for: Callable[[Path], list[str]], what: str) -> Path:
    """Create ``target`` (file or folder) once: under a lock, into a temp name, then atomic rename."""
    if target.exists():
        return target
    with _locked(target.with_name(target.name + ".lock")):
        if not target.exists():
            tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _generate(args_for(tmp), what)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _prune_stale(pattern: str, keep: Path) -> None:
    """Remove older generations (another generator version) nobody has touched for a while."""
    for old in FIXTURES_ROOT.glob(pattern):
        if old != keep and old.is_dir() and time.time() - old.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
            old.with_name(old.name + ".lock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The generated tiny repos (``<dir>/tiny-stt/config.json`` ...), cached per generator version."""
    import make_fixtures

    target = FIXTURES_ROOT / make_fixtures.fixture_version()
    _build_once(target, lambda tmp: [str(tmp)], "the tiny reference repos")
    os.utime(target)  # mark as in use (see _prune_stale)
    _prune_stale("[0-9a-f]" * 12, target)
    return target


@pytest.fixture(scope="session")
def hf_cache(fixture_dir: Path) -> Path:
    """The session's Hugging Face hub cache, holding ``dsm-test/<repo>`` for every tiny repo."""
    import make_fixtures

    cache = Path(os.environ["HF_HUB_CACHE"])
    for name in make_fixtures.REPO_NAMES:
        make_fixtures.install_into_hf_cache(fixture_dir / name, cache, make_fixtures.repo_id(name))
    return cache


@pytest.fixture(scope="session")
def tiny_stt(hf_cache: Path) -> str:
    """Repo id of the stt-1b-en_fr-shaped tiny model (0.5 s delay, VAD heads)."""
    return "dsm-test/tiny-stt"


@pytest.fixture(scope="session")
def tiny_stt_prefix(hf_cache: Path) -> str:
    """Repo id of the stt-2.6b-en-shaped tiny model (2.5 s delay, 1 s silence prefix)."""
    return "dsm-test/tiny-stt-prefix"


@pytest.fixture(scope="session")
def tiny_tts(hf_cache: Path) -> str:
    """Repo id of the tts-1.6b-en_fr-shaped tiny model (voice cross-attention, CFG LUT)."""
    return "dsm-test/tiny-tts"


@pytest.fixture(scope="session")
def tiny_tts_prefix(hf_cache: Path) -> str:
    """Repo id of the tts-0.75b-en-public-shaped tiny model (audio-prefix voice, real CFG)."""
    return "dsm-test/tiny-tts-prefix"


@pytest.fixture(scope="session")
def tiny_voices(hf_cache: Path) -> str:
    """Repo id of the voices repo for tiny-tts (``voices/alice.wav``, ``voices/bob.wav`` + embeddings)."""
    return "dsm-test/tiny-voices"


@pytest.fixture(scope="session")
def real_mimi_path() -> Path:
    """A real-size random Mimi (released sizes and names, ~385 MB), generated once and kept."""
    import make_fixtures

    folder = FIXTURES_ROOT / f"real-mimi-{make_fixtures.real_mimi_version()}"
    _build_once(folder, lambda tmp: ["--real-mimi", str(tmp / make_fixtures.REAL_MIMI_NAME)], "the real-size Mimi")
    os.utime(folder)
    _prune_stale("real-mimi-" + "[0-9a-f]" * 12, folder)
    return folder / make_fixtures.REAL_MIMI_NAME
