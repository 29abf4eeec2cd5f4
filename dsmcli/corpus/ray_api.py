"""A callable class for Ray Data pipelines: ``Dataset.map_batches(Transcribe, ...)``.

Each actor loads the model once and runs every batch it gets through the batch slots of ``dsm transcribe``
(``dsmcli.stt.transcriber.Transcriber``: the same code path, the same outputs byte for byte). Inputs are rows with
a ``path`` column and, optionally, ``audio`` (float32 mono at 24 kHz, e.g. from :func:`decode_audio` in CPU
tasks) and ``error`` (a decode failure to record). Outputs are written by path (``<output>/<stem>.<ext>``,
atomically); the returned rows are manifest rows: ``path, status, error, audio_seconds, words, outputs,
wall_seconds, model, exit_code, worker`` (host:pid). A failing input is a ``failed`` row, never an exception::

    import ray
    from dsmcli.corpus.ray_api import Transcribe, decode_audio

    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map(decode_audio)                                    # CPU tasks: decode + resample
    rows = ds.map_batches(Transcribe, batch_size=8, concurrency=4, num_gpus=1,
                          fn_constructor_kwargs={"model": "stt-1b-en_fr", "output": "out/",
                                                 "formats": ["srt", "json"]})
    rows.write_json("manifest/")                                 # or iterate: rows.iter_rows()

This module imports no Ray: the class is plain Python, so it can also run batches in-process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from dsmcli.corpus.record import Recorder
from dsmcli.errors import EXIT_INPUT, DsmError

COLUMNS = ("path", "status", "error", "audio_seconds", "words", "outputs", "wall_seconds", "model", "exit_code",
           "worker")


def decode_audio(row: dict[str, Any], raw: bool = False, rate: int | None = None,
                 channels: int | None = None) -> dict[str, Any]:
    """``{"path"}`` → ``{"path", "audio" (float32 mono 24 kHz), "error"}``: the whole file, decoded and resampled
    in the same chunks as ``dsm transcribe`` reads it; a decode failure is returned in ``error``."""
    from dsmcli.audio import open_audio

    path = str(row["path"])
    try:
        source = open_audio(path, raw=raw, rate=rate, channels=channels)
        chunks = list(source)
    except DsmError as error:
        return {"path": path, "audio": np.zeros(0, dtype=np.float32), "error": str(error)}
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return {"path": path, "audio": audio.astype(np.float32, copy=False), "error": ""}


def transcribe_request(model: str, output: str | None, formats: Sequence[str], *, batch_size: int = 8,
                       device: str = "auto", dtype: str = "auto", quantize: str = "none", force: bool = False,
                       threads: int | None = None, kernels: str = "auto"):
    """The ``transcribe_run.Request`` of a corpus job with default decoding and layout options; ``output`` is a
    directory (default: the current one), where each input's ``<stem>.<ext>`` files go; ``kernels``: the actors'
    native CPU kernels (auto, native, torch)."""
    from dsmcli.commands.common import check_kernels
    from dsmcli.commands import transcribe_run as run
    from dsmcli.commands.common import resolve_device, resolve_dtype

    directory = os.path.join(output or ".", "")  # a trailing separator: -o's rule for a directory
    return run.Request(
        sources=[], formats=list(formats), output=directory, force=force, model=model,
        device=resolve_device(device), dtype=resolve_dtype(dtype, device), batch_size=batch_size, raw=False,
        rate=None, channels=None, audio_device=None, options=run.transcribe_options(0.0, None, False, 0.5),
        writer_options=run.writer_options(None, None, None, False), segment_options=run.segment_options(None, False),
        progress=False, quantize=run.quantize_method(quantize), kernels=check_kernels(kernels), threads=threads,
        atomic=True)


class Transcribe:
    """Ray Data callable class: loads the model once (``__init__``), transcribes a batch per call.

    Give either the keyword arguments of :func:`transcribe_request` or a whole ``request``
    (``dsmcli.commands.transcribe_run.Request``, what ``dsm transcribe --ray`` passes)."""

    def __init__(self, model: str = "stt-1b-en_fr", output: str | None = None, formats: Sequence[str] = ("txt",),
                 *, request: Any = None, **options: Any) -> None:
        import torch

        from dsmcli.stt import SttModel

        self.request = request if request is not None else transcribe_request(model, output, formats, **options)
        if self.request.threads:
            torch.set_num_threads(self.request.threads)
        self.model = SttModel.load(self.request.model, device=self.request.device, dtype=self.request.dtype,
                                   quantize=self.request.quantize, kernels=self.request.kernels)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from dsmcli.commands import transcribe_run as run
        from dsmcli.stt.transcriber import SttJob, Transcriber

        paths = [str(path) for path in batch["path"]]
        audios, errors = batch.get("audio"), batch.get("error")
        recorder = Recorder(self.request.model)
        request = replace(self.request, sources=paths, recorder=recorder)
        result = run.RunResult(total=len(paths))
        jobs = []
        for i, path in enumerate(paths):
            if errors is not None and errors[i]:
                recorder.failed(path, str(errors[i]), EXIT_INPUT)
                continue
            sink = run.OutputSink(request, path, self.model.name, result)
            audio = None if audios is None else np.asarray(audios[i], dtype=np.float32)
            jobs.append(SttJob(path, _opener(path, audio, sink, request), sink))
        if jobs:
            batch_size = min(self.request.batch_size, len(jobs))
            Transcriber(self.model, self.request.options, batch_size=batch_size).run(jobs)
        return _columns(paths, recorder)


def _opener(path: str, audio: np.ndarray | None, sink: Any, request: Any):
    def open_source() -> Iterable[np.ndarray]:
        sink.record.opened(path)
        if audio is not None:
            return [audio] if len(audio) else []
        from dsmcli.audio import open_audio

        sink.audio = open_audio(path, raw=request.raw, rate=request.rate, channels=request.channels)
        return sink.audio

    return open_source


def _columns(paths: list[str], recorder: Recorder) -> dict[str, list[Any]]:
    """Manifest rows in input order, as columns."""
    rows = {row.path: row for row in recorder.rows}
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for path in paths:
        row = rows[path]
        values = row.to_json()
        values["words"] = row.words
        values["exit_code"] = recorder.exit_codes.get(path, 0)
        values["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        for name in COLUMNS:
            columns[name].append(values.get(name))
    return columns
