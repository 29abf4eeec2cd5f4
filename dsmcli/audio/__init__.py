"""Audio I/O: decode any input to 24 kHz mono float32 chunks; write audio incrementally.

Sources yield ``[n]`` float32 chunks at ``SAMPLE_RATE``; ``FrameChunker`` re-cuts them into
codec frames. Sinks take float32 ``[n]`` (or ``[n, channels]``) samples in [-1, 1].
"""

from dsmcli.audio.chunker import FrameChunker
from dsmcli.audio.pcm import PcmFormat, SampleEncoding, WavHeader, read_wav_header
from dsmcli.audio.resample import StreamResampler, downmix
from dsmcli.audio.sinks import AudioSink, RawWriter, SoundfileWriter, WavWriter, open_sink, player_command
from dsmcli.audio.source import STDIN, AudioSource, open_audio

__all__ = [
    "STDIN",
    "AudioSink",
    "AudioSource",
    "FrameChunker",
    "PcmFormat",
    "RawWriter",
    "SampleEncoding",
    "SoundfileWriter",
    "StreamResampler",
    "WavHeader",
    "WavWriter",
    "downmix",
    "open_audio",
    "open_sink",
    "player_command",
    "read_wav_header",
]
