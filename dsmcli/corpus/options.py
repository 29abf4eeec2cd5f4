"""What a corpus run was asked (``--manifest``, ``--resume``, ``--shard``, ``--ray*``): plain values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from dsmcli.corpus.inputs import Shard


@dataclass(frozen=True)
class RayOptions:
    """``--ray`` (address None: ``RAY_ADDRESS``, else a local cluster), ``--ray-actors``, ``--ray-gpus-per-actor``;
    ``device`` / ``dtype`` are the flags as written (an actor resolves ``auto`` on its own machine)."""

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class CorpusOptions:
    manifest: str | None = None
    resume: bool = False
    shard: Shard | None = None
    ray: RayOptions | None = None

    @property
    def active(self) -> bool:
        return bool(self.manifest or self.resume or self.shard or self.ray)
