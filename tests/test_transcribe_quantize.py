"""`dsm transcribe --quantize int8|int4` runs end to end; int8 stays close to the fp32 transcript."""

from __future__ import annotations

import difflib
import json

import soundfile


def test_int8_transcript_close_to_fp32(run_dsm, tiny_stt, bria_24k, tmp_path):
    wav = tmp_path / "talk.wav"
    soundfile.write(wav, bria_24k(8.0), 24000)
    texts = {}
    for method in ("none", "int8"):
        out = run_dsm("transcribe", wav, "-m", tiny_stt, "--quantize", method, "--threads", "1",
                      "-f", "json", "-o", f"{tmp_path / method}/")
        assert out.returncode == 0, out.stderr.decode()
        data = json.loads((tmp_path / method / "talk.json").read_text())
        texts[method] = [w["word"] for seg in data["segments"] for w in seg["words"]]
    assert texts["none"], "the fixture transcribes words"
    # characters, not words: a flipped token of this random tiny model moves word boundaries locally
    full = {method: "".join(words) for method, words in texts.items()}
    ratio = difflib.SequenceMatcher(a=full["none"], b=full["int8"]).ratio()
    assert ratio >= 0.85, f"{ratio:.2f}: {'|'.join(texts['none'])} vs {'|'.join(texts['int8'])}"


def test_unknown_quantize_method_is_a_usage_error(run_dsm, tiny_stt, tmp_path):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, [0.0] * 24000, 24000)
    out = run_dsm("transcribe", wav, "-m", tiny_stt, "--quantize", "int3")
    assert out.returncode == 2 and b"unknown method" in out.stderr and b"Traceback" not in out.stderr


def test_int4_transcribes(run_dsm, tiny_stt, bria_24k, tmp_path):
    wav = tmp_path / "talk.wav"
    soundfile.write(wav, bria_24k(4.0), 24000)
    out = run_dsm("transcribe", wav, "-m", tiny_stt, "--quantize", "int4", "--threads", "1", "-f", "json",
                  "-o", f"{tmp_path / 'int4'}/")
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads((tmp_path / "int4" / "talk.json").read_text())
    assert [w["word"] for seg in data["segments"] for w in seg["words"]], "int4 still transcribes words"
