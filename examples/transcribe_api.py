"""Transcribe files from Python with the library under `dsm transcribe`.

    python examples/transcribe_api.py talk.mp3 other.wav [--model stt-1b-en_fr]

Words are printed as soon as they are final; the inputs run as parallel batch slots.
"""

from __future__ import annotations

import argparse

from dsmcli.audio import open_audio
from dsmcli.results import EndOfTurn, Word
from dsmcli.stt import SttModel
from dsmcli.stt.transcriber import SttJob, Transcriber, TranscribeOptions


class PrintSink:
    def __init__(self, name: str) -> None:
        self.name = name

    def event(self, event: Word | EndOfTurn) -> None:
        if isinstance(event, Word):
            print(f"{self.name} [{event.start:7.2f} → {event.end:7.2f}]{event.text}", flush=True)
        else:
            print(f"{self.name} [{event.time:7.2f}] end of turn (p={event.probability:.2f})", flush=True)

    def finish(self, duration: float) -> None:
        print(f"{self.name}: done, {duration:.1f} s of audio")

    def fail(self, error: Exception) -> None:
        print(f"{self.name}: {error}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--model", default="stt-1b-en_fr")
    args = parser.parse_args()
    model = SttModel.load(args.model)
    jobs = [SttJob(path, (lambda p=path: open_audio(p)), PrintSink(path)) for path in args.inputs]
    Transcriber(model, TranscribeOptions(), batch_size=len(jobs)).run(jobs)


if __name__ == "__main__":
    main()
