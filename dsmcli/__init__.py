"""dsmcli: streaming speech-to-text and text-to-speech with Kyutai's DSM checkpoints."""

__version__ = "0.1.0"
