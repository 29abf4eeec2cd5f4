"""`dsm bench` on the tiny models: every figure present, positive and consistent (never their values: timings
on a shared CI machine are noise), the JSON schema, the random-weights path and the released architectures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dsmcli.bench.architectures import APPROXIMATE, ARCHITECTURES, released_config
from dsmcli.bench.runner import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    BenchOptions,
    parse_batches,
    parse_paths,
    run_bench,
)
from dsmcli.bench.models import load_bench_model
from dsmcli.bench.paths import BenchPath
from dsmcli.cli import main
from dsmcli.engine import LM, LMConfig
from dsmcli.errors import UsageError
from dsmcli.hub.checkpoint import Checkpoint
from dsmcli.hub.files import ModelSource
from dsmcli.hub.registry import load_registry
from dsmcli.hub.loaders import load_lm

STEPS, WARMUP = 3, 1
# FORMAT.md intro: published parameter counts of the released LMs.
PUBLISHED_PARAMS = {"stt-1b-en_fr": 989_253_632, "stt-2.6b-en": 2_617_118_720, "tts-1.6b-en_fr": 1_836_550_272}
RESULT_KEYS = {"path", "batch", "steps", "ms_per_step", "x_realtime", "rtf", "throughput_x_realtime",
               "stream_steps_per_s", "first_output_ms", "first_output_steps", "warmup_steps", "warmup_ms",
               "warmup_first_step_ms", "peak_memory_mb", "memory_measure", "voice_projection_ms"}
STATS_KEYS = {"median", "p10", "p90", "min", "max", "mean"}
TOP_KEYS = {"schema", "version", "model", "model_type", "random_weights", "params", "device", "dtype", "quantize",
            "quantize_kernel", "threads", "load_seconds", "load_average", "torch", "platform", "results"}


def _check_result(result: dict, batch: int) -> None:
    assert set(result) == RESULT_KEYS
    stats = result["ms_per_step"]
    assert set(stats) == STATS_KEYS and all(stats[k] > 0 for k in STATS_KEYS)
    assert stats["min"] <= stats["p10"] <= stats["median"] <= stats["p90"] <= stats["max"]
    assert result["batch"] == batch and result["steps"] == STEPS and result["warmup_steps"] == WARMUP
    for key in ("x_realtime", "rtf", "throughput_x_realtime", "stream_steps_per_s", "first_output_ms",
                "warmup_ms", "warmup_first_step_ms", "peak_memory_mb"):
        assert result[key] > 0 and math.isfinite(result[key]), key
    assert result["x_realtime"] * result["rtf"] == pytest.approx(1.0)
    assert result["throughput_x_realtime"] == pytest.approx(result["x_realtime"] * batch)
    assert result["stream_steps_per_s"] == pytest.approx(batch * 1000 / stats["median"])


def test_run_bench_stt_released_weights(tiny_stt):
    options = BenchOptions(model=tiny_stt, batch_sizes=(1, 2), steps=STEPS, warmup=WARMUP)
    report = run_bench(options).to_json()
    assert (report["schema"], report["version"]) == (SCHEMA_NAME, SCHEMA_VERSION)
    assert set(report) == TOP_KEYS and report["torch"] == torch.__version__
    assert report["load_average"] is None or len(report["load_average"]) == 2
    assert report["model_type"] == "stt" and not report["random_weights"] and report["quantize"] == "none"
    assert report["threads"] == torch.get_num_threads() and report["params"] > 0
    configs = [(r["path"], r["batch"]) for r in report["results"]]
    assert configs == [(p, b) for p in ("stt", "codec-encode", "codec-decode") for b in (1, 2)]
    for result in report["results"]:
        _check_result(result, result["batch"])
        assert result["voice_projection_ms"] is None  # only the tts path makes a voice
    stt = report["results"][0]
    assert stt["first_output_steps"] == math.ceil(0.5 * 12.5) + 1  # 0.5 s text delay, no silence prefix
    assert report["results"][2]["first_output_steps"] == 1


def test_cli_bench_tts_random_weights_int8_json(tiny_tts, run_dsm):
    proc = run_dsm("bench", "--model", tiny_tts, "--random-weights", "--batch", "1,2", "--paths", "tts",
                   "--steps", str(STEPS), "--warmup", str(WARMUP), "--quantize", "int8", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["version"] == SCHEMA_VERSION and report["random_weights"] is True
    assert (report["model_type"], report["quantize"]) == ("tts", "int8")
    assert report["quantize_kernel"] in ("native", "mixed", "dequantize")  # mixed: tiny widths use dequantize
    assert [(r["path"], r["batch"]) for r in report["results"]] == [("tts", 1), ("tts", 2)]
    for result in report["results"]:
        _check_result(result, result["batch"])
        assert result["first_output_steps"] == 16 + 2 + 1  # audio delay 1.28 s, acoustic delay 2, one step
        # the voice is made (projected) once when the runner is built, timed apart from the first audio
        assert result["voice_projection_ms"] > 0 and math.isfinite(result["voice_projection_ms"])


def test_cli_bench_tts_table_reports_the_voice_projection(tiny_tts, capsys):
    main(["bench", "--model", tiny_tts, "--random-weights", "--paths", "tts", "--steps", "2", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "voice projection" in out and "once per voice" in out and "first output" in out


def test_cli_bench_table(tiny_stt, capsys):
    main(["bench", "--model", tiny_stt, "--paths", "codec", "--steps", "2", "--warmup", "0"])
    out = capsys.readouterr().out
    for text in ("codec-encode", "codec-decode", "ms/step", "x real time", "RTF", "first output", "peak mem"):
        assert text in out


def test_random_weights_stt_builds_the_configured_architecture(tiny_stt):
    model = load_bench_model(tiny_stt, torch.device("cpu"), torch.float32, random_weights=True, seed=3)
    released = load_lm(tiny_stt, dtype=torch.float32)
    shapes = {k: v.shape for k, v in model.lm.state_dict().items()}
    assert shapes == {k: v.shape for k, v in released.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in model.lm.state_dict().values())
    assert all(torch.isfinite(v).all() for v in model.mimi.state_dict().values())
    assert model.mimi.num_codebooks == model.lm.config.n_q


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_built_in_architectures_have_the_published_sizes(name):
    checkpoint = Checkpoint.from_config(ModelSource(name=name), released_config(name))
    lm = LM(LMConfig.from_dict(checkpoint.lm_kwargs), device="meta")
    assert sum(p.numel() for p in lm.parameters()) == PUBLISHED_PARAMS[name]
    assert checkpoint.mimi_config is None  # released Mimi sizes


def test_every_registry_model_has_an_architecture():
    models = {name for name, entry in load_registry().items() if entry.role in ("stt", "tts")}
    assert models == set(ARCHITECTURES)
    assert APPROXIMATE <= set(ARCHITECTURES)


def test_usage_errors(tiny_stt, capsys):
    with pytest.raises(UsageError):
        parse_paths("stt,nope")
    with pytest.raises(UsageError):
        parse_batches("1,x")
    with pytest.raises(UsageError):
        BenchOptions(model="m", batch_sizes=(0,))
    assert parse_paths("codec,stt") == (BenchPath.CODEC_ENCODE, BenchPath.CODEC_DECODE, BenchPath.STT)
    with pytest.raises(UsageError, match="needs a tts model"):
        run_bench(BenchOptions(model=tiny_stt, paths=(BenchPath.TTS,), steps=1, warmup=0))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", tiny_stt, "--quantize", "int3"])
    assert exit_info.value.code == 2 and "--quantize" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", "no-such-model", "--random-weights"])
    assert exit_info.value.code == 3 and "unknown model" in capsys.readouterr().err


def test_tts_path_steps_like_speak_and_decodes_from_the_first_audio(tiny_tts, monkeypatch):
    """The timed TTS step is ``dsm speak``'s: no Mimi decode before the first audio frame, one decode of every
    slot per step from then on, and the audio tokens zero before each codebook's delay (the speak hook)."""
    from dsmcli.bench.paths import TtsRunner
    from dsmcli.codec import Mimi
    from dsmcli.engine.config import ZERO_TOKEN_ID

    model = load_bench_model(tiny_tts, torch.device("cpu"), torch.float32, random_weights=True, seed=1)
    decoded: list[int] = []
    original = Mimi.decode_step
    monkeypatch.setattr(Mimi, "decode_step", lambda self, codes, state, active=None:
                        decoded.append(codes.shape[0]) or original(self, codes, state, active))
    runner = TtsRunner(model, 2, seed=0)
    outputs = []
    step_stream = runner.stream.step
    runner.stream.step = lambda *args, **kwargs: outputs.append(step_stream(*args, **kwargs)) or outputs[-1]
    runner.start()
    delays = model.lm.config.delays[1 : model.lm.config.dep_q + 1]
    for step in range(runner.first_output_steps + 3):
        runner.step()
        assert len(decoded) == max(0, step + 2 - runner.first_output_steps), step
        audio = outputs[-1].audio_tokens  # [B, G]: this step's audio tokens, after the hook
        early = [q for q, delay in enumerate(delays) if step < delay + runner.delay_steps]
        if step >= runner.delay_steps and early:
            assert (audio[:, early] == ZERO_TOKEN_ID).all()
    assert decoded == [2] * 4
