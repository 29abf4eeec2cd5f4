"""Live transcription for a server: streams on a shared batched model in a step thread; push audio as it arrives
(from any thread), pull words as they are final.

    python examples/session_transcribe.py talk.wav [MODEL]

(In one thread, ``Transcriber.transcribe`` does the same for a file, an array or an iterable of chunks: see
examples/transcribe_api.py.)
"""

import sys

from dsmcli.audio import open_audio
from dsmcli.results import Word
from dsmcli.stt import SttModel
from dsmcli.stt.session import SttEngine

model = sys.argv[2] if len(sys.argv) > 2 else "stt-1b-en_fr"
with SttEngine(SttModel.load(model), batch_size=4) as engine:  # 4 slots, one step thread
    stream = engine.open()
    for chunk in open_audio(sys.argv[1]):  # float32 mono 24 kHz chunks (a microphone works the same way)
        stream.push(chunk)
    stream.end()
    for event in stream.events():  # Word / EndOfTurn (/ VadStep / Marker), then StreamEnd
        if isinstance(event, Word):
            print(f"[{event.start:6.2f} -> {event.end:6.2f}]{event.text}")
