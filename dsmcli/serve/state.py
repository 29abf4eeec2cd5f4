"""What the server holds: its options and the engines of the loaded models (either may be absent)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dsmcli.serve.config import ServeOptions
from dsmcli.stt.session import SttEngine
from dsmcli.tts.session import TtsEngine


@dataclass
class ServeState:
    options: ServeOptions
    stt: SttEngine | None = None
    tts: TtsEngine | None = None
    started: float = field(default_factory=time.time)

    def model_names(self) -> list[str]:
        engines = [self.stt.model.name if self.stt else None, self.tts.model.name if self.tts else None]
        return [name for name in engines if name]

    def start(self) -> None:
        for engine in (self.stt, self.tts):
            if engine is not None:
                engine.start()

    def stop(self, timeout: float) -> None:
        for engine in (self.stt, self.tts):
            if engine is not None:
                engine.stop(timeout)

    def health(self) -> dict[str, object]:
        out: dict[str, object] = {"status": "ok"}
        for kind, engine in (("stt", self.stt), ("tts", self.tts)):
            if engine is not None:
                scheduler = engine.scheduler
                out[kind] = {"model": engine.model.name, "slots": scheduler.batch_size, "busy": scheduler.busy,
                             "steps": scheduler.steps}
        return out
