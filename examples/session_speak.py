"""Streaming speech synthesis for a server: streams on a shared batched model in a step thread; push text as it
arrives (from any thread), pull 80 ms audio frames.

    python examples/session_speak.py "Hello world, this is DSM." out.wav

(In one thread, ``Synthesizer.synthesize(pieces)`` takes the text pieces as an iterable instead: see
examples/speak_api.py.)
"""

import sys

import soundfile

from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.tts.session import AudioChunk, TtsEngine

with TtsEngine(TtsModel.load("tts-1.6b-en_fr"), SpeakOptions(seed=1), batch_size=2) as engine:
    stream = engine.open()  # the default voice; or a name from the voices repo
    for word in sys.argv[1].split():  # e.g. the words of an LLM as they are generated
        stream.push(word + " ")
    stream.end()
    with soundfile.SoundFile(sys.argv[2], "w", samplerate=24000, channels=1) as out:
        for event in stream.events():  # AudioChunk / Word, then StreamEnd (its result: SpeechResult)
            if isinstance(event, AudioChunk):
                out.write(event.pcm)
