"""Per-run choices of a synthesis (temperature, CFG, padding) with the reference defaults (FORMAT.md §4, §6.4).

No torch here: the CLI reads these defaults while it builds ``--help``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dsmcli.errors import OptionError
from dsmcli.tts.script import DEFAULT_PADDING_BETWEEN

# TTSModel.from_checkpoint_info defaults (the dataclass default max_padding 6 is not what the scripts use).
DEFAULT_INITIAL_PADDING = 2
DEFAULT_MAX_PADDING = 8
# Reference defaults (TTSModel fields and the DSM scripts, FORMAT.md §4 and §6.4).
DEFAULT_TEMPERATURE = 0.6
TEXT_TOP_K = 25  # LMGen top_k_text
AUDIO_TOP_K = 250  # LMGen top_k
DEFAULT_CFG = 2.0  # distilled LUT value ("2.0") for tts-1.6b, real coefficient for tts-0.75b
FINAL_PADDING = 4  # steps generated past the end of the text, after the audio delay
MAX_GEN_STEPS = 30000  # TTSModel.max_gen_length


@dataclass(frozen=True)
class SpeakOptions:
    """Per-run synthesis choices.

    ``cfg``: None = the model's default (2.0); for a model distilled with CFG (a ``cfg`` LUT) it must be one of the
    LUT values, otherwise it is the real guidance coefficient (1 = no guidance). ``padding_bonus`` is added to the
    PAD logit (positive = slower speech). ``max_steps`` bounds each input's generation.
    """

    temperature: float = DEFAULT_TEMPERATURE
    cfg: float | None = None
    padding_bonus: float = 0.0
    seed: int | None = None
    max_padding: int = DEFAULT_MAX_PADDING
    initial_padding: int = DEFAULT_INITIAL_PADDING
    padding_between: int = DEFAULT_PADDING_BETWEEN
    final_padding: int = FINAL_PADDING
    max_steps: int = MAX_GEN_STEPS
    text_top_k: int = TEXT_TOP_K
    audio_top_k: int = AUDIO_TOP_K

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise OptionError("temperature", f"must be a number >= 0, got {self.temperature}")
        if self.cfg is not None and not (math.isfinite(self.cfg) and self.cfg > 0):
            raise OptionError("cfg", f"must be a number > 0, got {self.cfg}")
        if not math.isfinite(self.padding_bonus):
            raise OptionError("padding_bonus", f"must be a finite number, got {self.padding_bonus}")
        if self.max_padding < 1:
            raise OptionError("max_padding", f"must be >= 1, got {self.max_padding}")
        if min(self.initial_padding, self.padding_between, self.final_padding) < 0 or self.max_steps < 1:
            raise OptionError("padding", f"and step limits are invalid in {self}")
