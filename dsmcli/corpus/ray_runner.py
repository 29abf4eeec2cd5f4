"""``dsm transcribe ... --ray``: the corpus job on a Ray cluster, with Ray Data.

paths → ``decode_audio`` in CPU tasks (decode + resample, one file per task) → a pool of ``--ray-actors``
``Transcribe`` actors (``--ray-gpus-per-actor`` GPUs each; each loads the model once and runs the batch slots
of ``dsm transcribe``) → outputs written by path on the shared filesystem, manifest rows streamed back to this
driver, which appends them to ``--manifest`` as they arrive. A failing input is a ``failed`` row, never fatal.
Decoded audio travels through Ray's object store as float32 (~350 MB per hour of audio); Ray Data's
streaming executor bounds how much is in flight.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from typing import Any

from dsmcli.corpus.manifest import FAILED, ManifestRow
from dsmcli.corpus.options import RayOptions
from dsmcli.corpus.ray_api import Transcribe, decode_audio
from dsmcli.errors import DsmError, UsageError

LOCAL = ("local", "")


class _Failed(DsmError):
    """An input that failed on an actor, with its error's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'dsmcli[ray]'") from None
    return ray


def connect(ray: Any, address: str | None, options: RayOptions) -> None:
    """Join the cluster at ``address`` (None: ``RAY_ADDRESS`` if set, else start a local one). A local cluster gets
    at least one logical CPU more than the actors hold, so decode tasks can always run beside them."""
    if ray.is_initialized():
        return
    if address in LOCAL:
        address = None
    elif address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    local: dict[str, Any] = {}
    if address is None:
        needed = math.ceil(options.actors * options.cpus_per_actor) + 1
        local["num_cpus"] = max(os.cpu_count() or 1, needed)
        local["_node_ip_address"] = "127.0.0.1"  # a cluster of this machine alone listens on loopback only
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **local)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise DsmError(f"cannot connect to the Ray cluster at {address or 'a new local cluster'}: "
                       f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def run_on_ray(request: Any, options: RayOptions):  # -> transcribe_run.RunResult
    """Run ``request.sources`` on the cluster; manifest rows are recorded here as the actors return them."""
    from dsmcli.commands import transcribe_run as run

    ray = import_ray()
    run.check_outputs(request)
    connect(ray, options.address, options)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = bool(request.progress)
    context.print_on_execution_start = False
    rows = ray.data.from_items([{"path": s} for s in request.sources], override_num_blocks=len(request.sources))
    rows = rows.map(decode_audio, fn_kwargs={"raw": request.raw, "rate": request.rate, "channels": request.channels},
                    num_cpus=1)
    rows = rows.map_batches(
        Transcribe, fn_constructor_kwargs={"request": actor_request(request, options)},
        batch_size=request.batch_size, concurrency=options.actors, num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None, batch_format="numpy")
    result = run.RunResult(total=len(request.sources))
    for row in rows.iter_rows():
        _record(row, request.recorder, result)
    return result


def actor_request(request: Any, options: RayOptions) -> Any:
    """The request every actor runs: no recorder (rows come back to the driver), ``--device``/``--dtype`` as
    resolved for the actors' machines (``auto``: CUDA when ``--ray-gpus-per-actor`` gives them GPUs)."""
    import torch

    from dsmcli.commands.common import parse_dtype

    device = options.device if options.device != "auto" else "cuda" if options.gpus_per_actor > 0 else "cpu"
    if options.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = parse_dtype(options.dtype)
    return replace(request, sources=[], recorder=None, progress=False, device=torch.device(device), dtype=dtype)


def _record(row: dict[str, Any], recorder: Any, result: Any) -> None:
    from dsmcli.commands.transcribe_run import report

    manifest_row = ManifestRow(
        path=str(row["path"]), status=str(row["status"]), model=str(row["model"]), error=row["error"] or None,
        audio_seconds=row["audio_seconds"], outputs=[str(p) for p in (row["outputs"] or [])],
        wall_seconds=row["wall_seconds"], words=None if row["words"] is None else int(row["words"]),
        worker=row.get("worker"))
    if manifest_row.status == FAILED:
        error = _Failed(manifest_row.error or "failed", int(row["exit_code"] or 1))
        result.errors.append(error)
        report(error)
    if recorder is not None:
        recorder.add(manifest_row)
