"""Glue of `dsm serve`: load the models (errors exit before binding the port), build the engines, serve."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsmcli.errors import DsmError
from dsmcli.serve.config import ServeOptions
from dsmcli.serve.logs import log


@dataclass(frozen=True)
class ServeRequest:
    stt: str | None
    tts: str | None
    voice_repo: str | None
    voice: str | None
    options: ServeOptions
    device: torch.device
    dtype: torch.dtype
    quantize: str = "none"
    kernels: str = "auto"  # --kernels: auto, native, torch (dsmcli.kernels.KernelChoice)
    threads: int | None = None
    temperature: float | None = None
    cfg: float | None = None
    seed: int | None = None


def _stt_engine(request: ServeRequest):
    from dsmcli.commands.transcribe_run import quantize_method
    from dsmcli.stt import SttModel
    from dsmcli.stt.session import SttEngine
    from dsmcli.stt.transcriber import TranscribeOptions

    options = TranscribeOptions(temperature=request.temperature or 0.0)
    model = SttModel.load(request.stt, device=request.device, dtype=request.dtype,  # type: ignore[arg-type]
                          quantize=quantize_method(request.quantize), kernels=request.kernels)
    return SttEngine(model, options, batch_size=request.options.max_streams, max_waiting=request.options.max_waiting)


def _tts_engine(request: ServeRequest):
    from dsmcli.commands.transcribe_run import quantize_method
    from dsmcli.tts.model import SpeakOptions, TtsModel
    from dsmcli.tts.session import TtsEngine

    options = SpeakOptions(cfg=request.cfg, seed=request.seed,
                           **({} if request.temperature is None else {"temperature": request.temperature}))
    model = TtsModel.load(request.tts, device=request.device, dtype=request.dtype,  # type: ignore[arg-type]
                          voice_repo=request.voice_repo, quantize=quantize_method(request.quantize),
                          kernels=request.kernels)
    model.cfg_value(options)  # UsageError for a --cfg the model was not distilled with
    engine = TtsEngine(model, options, batch_size=request.options.max_streams, max_waiting=request.options.max_waiting,
                       default_voice=request.voice)
    try:
        engine.voice(None)  # load the default voice now: a request without a voice should not wait for it
    except DsmError as exc:
        if request.voice is not None:
            raise
        log(f"warning: no default voice ({exc}); requests must name a voice")
    return engine


def execute(request: ServeRequest) -> None:
    from dsmcli.commands.transcribe_run import quantize_method
    from dsmcli.serve.run import bind, serve
    from dsmcli.serve.state import ServeState

    quantize_method(request.quantize)
    if request.threads:
        torch.set_num_threads(request.threads)
    sock = bind(request.options.host, request.options.port)  # a taken port fails before the models load
    try:
        state = ServeState(request.options)
        state.stt = _stt_engine(request) if request.stt else None
        state.tts = _tts_engine(request) if request.tts else None
    except BaseException:
        sock.close()
        raise
    serve(state, sock)
