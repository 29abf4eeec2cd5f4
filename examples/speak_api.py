"""Speak a sentence to a WAV file from Python.  python examples/speak_api.py "Hello world." out.wav"""

import sys

import soundfile

from dsmcli.tts.model import SpeakOptions, TtsModel
from dsmcli.tts.synthesizer import Synthesizer

synthesizer = Synthesizer(TtsModel.load("tts-1.6b-en_fr"), SpeakOptions(seed=1))
with soundfile.SoundFile(sys.argv[2], "w", samplerate=24000, channels=1) as out:
    for chunk in synthesizer.synthesize(sys.argv[1]):  # the default voice; or voice="expresso/..."
        out.write(chunk.pcm)
