"""Typed task configs (``stt_config``, ``tts_config``, ``lm_gen_config``): the released keys are accepted, unknown keys
and bad values are a one-line ModelLoadError, and the defaults are the reference's."""

from __future__ import annotations

import inspect
import json

import pytest

from dsmcli.bench.architectures import ARCHITECTURES, released_config
from dsmcli.errors import ModelLoadError
from dsmcli.hub.checkpoint import Checkpoint, load_checkpoint
from dsmcli.hub.files import ModelSource
from dsmcli.hub.task_config import GenerationConfig, SttConfig, TtsConfig


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_released_configs_are_accepted(name):
    checkpoint = Checkpoint.from_config(ModelSource(name=name), released_config(name))
    if checkpoint.model_type == "stt":
        assert checkpoint.stt.audio_delay_seconds in (0.5, 2.5) and checkpoint.generation.top_k_text == 50
        assert checkpoint.generation.temp == checkpoint.generation.temp_text == 0.0
    else:
        assert (checkpoint.tts.audio_delay, checkpoint.tts.second_stream_ahead) == (1.28, 2)
        assert checkpoint.tts.delay_steps(12.5) == 16
        assert checkpoint.generation.temp_text == 0.6  # spelled text_temp in the released TTS configs


def test_fixture_configs_are_accepted(tiny_stt, tiny_stt_prefix, tiny_tts, tiny_tts_prefix):
    stt, prefix = load_checkpoint(tiny_stt), load_checkpoint(tiny_stt_prefix)
    assert stt.stt == SttConfig(0.5, 0.0) and prefix.stt == SttConfig(2.5, 1.0)
    for repo in (tiny_tts, tiny_tts_prefix):
        assert load_checkpoint(repo).tts == TtsConfig(audio_delay=1.28, second_stream_ahead=2)


@pytest.mark.parametrize("section, value, message", [
    ("stt_config", {"audio_delay": 0.5}, "stt_config has an unknown key 'audio_delay'"),
    ("stt_config", {"audio_delay_seconds": -1}, "stt_config.audio_delay_seconds must be a number >= 0"),
    ("tts_config", {"audio_delay": 1.28, "speed": 2}, "tts_config has an unknown key 'speed'"),
    ("tts_config", {"audio_delay": 1.28, "multistream": True}, "multistream TTS models are not supported"),
    ("tts_config", {"second_stream_ahead": 1.5}, "second_stream_ahead must be an integer >= 0"),
    ("lm_gen_config", {"temperature": 0.6}, "lm_gen_config has an unknown key 'temperature'"),
    ("lm_gen_config", {"temp_text": 0.6, "text_temp": 0.7}, "both text_temp and temp_text"),
    ("lm_gen_config", [], "lm_gen_config is not an object"),
])
def test_bad_task_configs_are_one_line_model_errors(section, value, message, tmp_path):
    raw = dict(released_config("stt-1b-en_fr" if section == "stt_config" else "tts-1.6b-en_fr"))
    raw[section] = value
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=message) as error:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_defaults_are_the_references():
    lm_gen = inspect.signature(pytest.importorskip("moshi.models.lm").LMGen.__init__).parameters
    for name, value in vars(GenerationConfig()).items():
        assert lm_gen[name].default == value, name
    assert SttConfig() == SttConfig(5.0, 1.0)  # the DSM STT script's fallbacks (FORMAT.md §5.2)
    assert (TtsConfig().second_stream_ahead, TtsConfig().multistream, TtsConfig().max_speakers) == (0, False, 5)
    with pytest.raises(ModelLoadError, match="no tts_config.audio_delay"):  # the reference raises KeyError
        TtsConfig().delay_steps(12.5, "m")
