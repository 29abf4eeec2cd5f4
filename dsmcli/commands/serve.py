"""`dsm serve`: flags -> ServeOptions, load the models once, serve both protocols until SIGINT/SIGTERM."""

from __future__ import annotations

from typing import Optional

import typer

from dsmcli.commands.common import kernels_option, resolve_device, resolve_dtype
from dsmcli.errors import DsmError, UsageError

SERVE_EXTRA = ("starlette", "uvicorn", "msgpack", "multipart")


def _check_extra() -> None:
    import importlib

    for module in SERVE_EXTRA:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            raise DsmError(f"dsm serve needs the serve extra ({module} is missing): "
                           f"pip install 'dsmcli[serve]'") from None


def serve_cmd(
    stt: Optional[str] = typer.Option(None, "--stt", help="STT model to serve (registry name, Hub repo id or dir).",
                                      rich_help_panel="Model"),
    tts: Optional[str] = typer.Option(None, "--tts", help="TTS model to serve.", rich_help_panel="Model"),
    voice_repo: Optional[str] = typer.Option(None, "--voice-repo", help="Voices repo (Hub id or dir) of --tts.",
                                             rich_help_panel="Model"),
    voice: Optional[str] = typer.Option(None, "--voice", help="Voice of TTS requests that name none (a name in the "
                                        "voices repo).", rich_help_panel="Model"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface).",
                             rich_help_panel="Input"),
    port: int = typer.Option(8080, "--port", help="TCP port.", rich_help_panel="Input"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DSM_API_KEY",
                                          help="Require this key (Bearer, kyutai-api-key header or ?auth_id=).",
                                          rich_help_panel="Input"),
    max_streams: int = typer.Option(8, "--max-streams", min=1, help="Concurrent streams (batch slots) per model.",
                                    rich_help_panel="Performance"),
    max_waiting: int = typer.Option(0, "--max-waiting", min=0,
                                    help="Streams that may wait for a slot when all are busy (else 503 / Error).",
                                    rich_help_panel="Performance"),
    max_connections: int = typer.Option(64, "--max-connections", min=1, help="Open connections (beyond: 503).",
                                        rich_help_panel="Performance"),
    max_upload_mb: float = typer.Option(25.0, "--max-upload-mb", help="Largest transcription upload (MiB).",
                                        rich_help_panel="Input"),
    max_text_chars: int = typer.Option(4096, "--max-text-chars", help="Longest text of one speech request/stream.",
                                       rich_help_panel="Input"),
    max_message_mb: float = typer.Option(4.0, "--max-message-mb", help="Largest WebSocket message (MiB).",
                                         rich_help_panel="Input"),
    idle_timeout: float = typer.Option(30.0, "--idle-timeout", help="Drop a WebSocket client silent this long (s).",
                                       rich_help_panel="Input"),
    shutdown_timeout: float = typer.Option(5.0, "--shutdown-timeout",
                                           help="On SIGINT/SIGTERM, time open streams get to finish (s).",
                                           rich_help_panel="Performance"),
    device: str = typer.Option("auto", "--device", help="Torch device: auto, cpu, cuda, cuda:1, mps.",
                               rich_help_panel="Devices"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16.",
                              rich_help_panel="Model"),
    quantize: str = typer.Option("none", "--quantize", help="none, int8 or int4 (LM weights; faster on CPU).",
                                 rich_help_panel="Performance"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: all cores).",
                                          rich_help_panel="Performance"),
    kernels: str = kernels_option(),
    temperature: Optional[float] = typer.Option(None, "--temperature",
                                                help="Sampling temperature (STT default 0 = greedy, TTS 0.6).",
                                                rich_help_panel="Decoding"),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="TTS classifier-free guidance (default 2.0).",
                                        rich_help_panel="Decoding"),
    seed: Optional[int] = typer.Option(None, "--seed", help="TTS random seed (a stream alone on the model "
                                       "then replays `dsm speak --seed`).", rich_help_panel="Decoding"),
) -> None:
    """Serve live STT / TTS streams to many clients through one batched engine per model (Kyutai's WebSocket
    protocol and OpenAI's audio API)."""
    from dsmcli.commands.serve_run import ServeRequest, execute
    from dsmcli.serve.config import MIB, ServeOptions

    if stt is None and tts is None:
        raise UsageError("give --stt MODEL, --tts MODEL, or both")
    _check_extra()
    options = ServeOptions(host=host, port=port, api_key=api_key, max_streams=max_streams, max_waiting=max_waiting,
                           max_connections=max_connections, max_upload_bytes=int(max_upload_mb * MIB),
                           max_text_chars=max_text_chars, max_message_bytes=int(max_message_mb * MIB),
                           idle_seconds=idle_timeout, shutdown_seconds=shutdown_timeout)
    execute(ServeRequest(stt=stt, tts=tts, voice_repo=voice_repo, voice=voice, options=options, device=resolve_device(device),
                         dtype=resolve_dtype(dtype, device), quantize=quantize, kernels=kernels, threads=threads,
                         temperature=temperature, cfg=cfg, seed=seed))
