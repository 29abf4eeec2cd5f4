"""Transcribe a file from Python: words come out as soon as they are final.  python examples/transcribe_api.py talk.mp3"""

import sys

from dsmcli.stt import SttModel
from dsmcli.stt.transcriber import Transcriber

words, info = Transcriber(SttModel.load("stt-1b-en_fr")).transcribe(sys.argv[1])
for word in words:
    print(f"[{word.start:6.2f} -> {word.end:6.2f}]{word.text}")
print(f"{info.duration:.1f} s of audio")
