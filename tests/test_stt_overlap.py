"""Mimi's encode beside the LM step (:class:`dsmcli.engine.side_thread.SideThread`, used by ``SttBatch`` on CPU
with two or more torch threads): the same codes and the same transcript as encoding first on the step's thread."""

from __future__ import annotations

import threading

import pytest
import torch

from dsmcli.engine.side_thread import SideThread
from dsmcli.hub.loaders import load_mimi
from dsmcli.stt import SttModel
from dsmcli.stt.batch import SttBatch
from dsmcli.stt.transcriber import Transcriber

ENCODE = SttBatch._encode


def _transcribe(model: SttModel, audio, overlap: bool, monkeypatch) -> tuple[list, set[str]]:
    """The transcript's events and the names of the threads that encoded."""
    monkeypatch.setattr(SttBatch, "overlap_encode", lambda self: overlap)
    threads: set[str] = set()

    def encode(self, ready):
        threads.add(threading.current_thread().name)
        return ENCODE(self, ready)

    monkeypatch.setattr(SttBatch, "_encode", encode)
    events, _ = Transcriber(model).transcribe(audio)
    return list(events), threads


def test_overlapped_encode_gives_the_same_transcript(tiny_stt, bria_24k, monkeypatch):
    torch.set_num_threads(2)
    model = SttModel.load(tiny_stt)
    audio = bria_24k(8.0)
    serial, serial_threads = _transcribe(model, audio, False, monkeypatch)
    overlapped, overlap_threads = _transcribe(model, audio, True, monkeypatch)
    assert serial_threads == {threading.current_thread().name}
    assert overlap_threads == {"dsm-mimi-encode"}
    assert serial and overlapped == serial


def test_overlap_only_on_cpu_with_two_threads(tiny_stt):
    batch = SttBatch(SttModel.load(tiny_stt))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert not batch.overlap_encode()
        torch.set_num_threads(2)
        assert batch.overlap_encode()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.slow
def test_real_size_mimi_codes_are_the_same_on_the_side_thread(real_mimi_path):
    """The released-size Mimi takes its native kernels and BLAS paths: a frame's codes on the worker thread are
    the caller's bit for bit (same torch thread count)."""
    torch.set_num_threads(2)
    mimi = load_mimi(str(real_mimi_path))
    frames = torch.randn(12, 1, 1, 1920, generator=torch.Generator().manual_seed(4)) * 0.1
    here, there = mimi.init_state(1), mimi.init_state(1)
    side = SideThread("test-side")
    with torch.no_grad():
        for frame in frames:
            expected = mimi.encode_step(frame, here)
            got = side.submit(mimi.encode_step, frame, there).result()
            assert torch.equal(got, expected)
    side.close()


def test_side_thread_returns_results_and_exceptions_as_the_caller_would():
    side = SideThread("test-side")
    with torch.no_grad():
        assert side.submit(torch.is_grad_enabled).result() is False
    assert side.submit(torch.is_grad_enabled).result() is True
    assert side.submit(torch.get_num_threads).result() == torch.get_num_threads()
    with pytest.raises(ValueError, match="boom"):
        side.submit(_raise, "boom").result()
    assert side.submit(lambda a, b: a + b, 2, 3).result() == 5
    side.close()


def _raise(message: str) -> None:
    raise ValueError(message)
