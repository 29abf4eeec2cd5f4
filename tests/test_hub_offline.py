"""The Hub unreachable (HF_HUB_OFFLINE not set): one line at once, never ~25 s of huggingface_hub retries.

The unreachable Hub is ``http://127.0.0.1:9``, a closed local port (no external traffic); the "is the Hub
contacted at all" checks point HF_ENDPOINT at a local socket that counts its connections.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsmcli.hub import files as hub
from dsmcli.errors import EXIT_INPUT, EXIT_MODEL

UNREACHABLE = "http://127.0.0.1:9"
FAST_S = 8.0  # huggingface_hub's back-off alone sleeps 1 + 2 + 4 + 8 + 8 = 23 s
LOCAL_ENV = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": UNREACHABLE, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path) -> Path:
    """This process sees an empty cache, no HF_HUB_OFFLINE, and the closed port as the Hub."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        UNREACHABLE + "/{repo_id}/resolve/{revision}/{filename}")
    return tmp_path


@pytest.fixture
def counting_hub() -> Iterator[tuple[str, list[int]]]:
    """A local TCP endpoint that accepts and drops connections, and the list of the ones it saw."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    seen: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    stop.set()
    thread.join()
    server.close()


def _one_error_line(done, code: int, *needles: str) -> str:
    err = done.stderr.decode()
    assert done.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsm: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_not_cached_fails_at_once_without_retries(unreachable_hub, caplog):
    caplog.set_level(logging.WARNING)
    started = time.perf_counter()
    with pytest.raises(hub.NotCachedError) as caught:
        hub.hub_download("kyutai/stt-1b-en_fr", "config.json", hint_name="stt-1b-en_fr")
    elapsed = time.perf_counter() - started
    assert elapsed < FAST_S, f"{elapsed:.1f} s: huggingface_hub retried"
    assert "Retrying" not in caplog.text
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Hub ({UNREACHABLE}")
    assert "kyutai/stt-1b-en_fr/config.json is not cached" in message and "dsm download stt-1b-en_fr" in message
    assert "\n" not in message


def test_cached_file_is_used_when_the_hub_is_unreachable(unreachable_hub, caplog):
    from huggingface_hub import constants

    commit = "0" * 40
    root = Path(constants.HF_HUB_CACHE) / "models--someone--model"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "snapshots" / commit / "config.json").write_text("{}")
    caplog.set_level(logging.WARNING)
    started = time.perf_counter()
    path = hub.hub_download("someone/model", "config.json")
    assert path.read_text() == "{}" and time.perf_counter() - started < FAST_S
    assert "Retrying" not in caplog.text


def test_download_cli_one_line(run_dsm, tmp_path):
    done = run_dsm("download", "stt-1b-en_fr", env={**LOCAL_ENV, "HF_HOME": str(tmp_path),
                                                     "HF_HUB_CACHE": str(tmp_path / "hub")}, timeout=120)
    _one_error_line(done, EXIT_MODEL, "cannot reach the Hub", "dsm download stt-1b-en_fr")


def test_bench_not_cached_points_at_random_weights(run_dsm, tmp_path):
    done = run_dsm("bench", "--model", "stt-1b-en_fr", "--steps", "1",
                   env={**LOCAL_ENV, "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}, timeout=120)
    _one_error_line(done, EXIT_MODEL, "not cached", "dsm bench --random-weights --model stt-1b-en_fr")


def test_mistyped_voice_is_an_unknown_voice_at_once(run_dsm, tiny_tts, tiny_voices, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Hello there.")
    done = run_dsm("speak", text, "--model", tiny_tts, "--voice-repo", tiny_voices, "--voice", "voices/carol.wav",
                   "-o", tmp_path / "out.wav", env=LOCAL_ENV, timeout=120)
    _one_error_line(done, EXIT_INPUT, "unknown voice voices/carol.wav", "dsm voices")
    assert not (tmp_path / "out.wav").exists()


def test_voices_lists_the_cache_without_contacting_the_hub(run_dsm, tiny_tts, tiny_voices, counting_hub):
    endpoint, seen = counting_hub
    env = {**LOCAL_ENV, "HF_ENDPOINT": endpoint}
    done = run_dsm("voices", "--model", tiny_tts, "--voice-repo", tiny_voices, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["voices/alice.wav", "voices/bob.wav"]
    # a model whose config is not cached: every cached voice, unfiltered, and a note saying so
    other = run_dsm("voices", "--model", "someone/not-cached", "--voice-repo", tiny_voices, env=env, timeout=120)
    assert other.returncode == 0, other.stderr.decode()
    assert set(other.stdout.decode().split()) == {"voices/alice.wav", "voices/bob.wav"}
    assert "someone/not-cached is not in the local cache" in other.stderr.decode()
    assert seen == [], "dsm voices contacted the Hub"
