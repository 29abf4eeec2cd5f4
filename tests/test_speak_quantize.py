"""`dsm speak` / `dsm dialog --quantize`: int8 and int4 run end to end; a bad method is a one-line usage error."""

from __future__ import annotations

import numpy as np
import soundfile
from conftest import run_dsm

TEXT = "Hello there, this is the tiny model reading a short line of text."


def _args(tiny_tts: str, tiny_voices: str) -> list[str]:
    return ["--model", tiny_tts, "--voice-repo", tiny_voices, "--voice", "voices/alice.wav", "--temperature", "0"]


def test_speak_quantized_runs_and_stays_close(tiny_tts, tiny_voices, tmp_path):
    audio = {}
    for method in ("none", "int8", "int4"):
        out = tmp_path / f"{method}.wav"
        proc = run_dsm("speak", "--text", TEXT, *_args(tiny_tts, tiny_voices), "--quantize", method, "-o", out)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
        audio[method], rate = soundfile.read(out)
        assert rate == 24000 and len(audio[method]) > 0 and np.isfinite(audio[method]).all()
    # greedy int8 follows the float run's length closely (the tiny model's words end where it decides)
    assert abs(len(audio["int8"]) - len(audio["none"])) <= 0.25 * len(audio["none"])


def test_dialog_and_speak_reject_unknown_method(tiny_tts, tiny_voices, tmp_path):
    proc = run_dsm("speak", "--text", TEXT, *_args(tiny_tts, tiny_voices), "--quantize", "int3", "-o",
                   tmp_path / "a.wav")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "unknown method 'int3'" in err and "Traceback" not in err
    assert err.startswith("dsm: error: ") and err.count("\n") == 1
    script = tmp_path / "talk.txt"
    script.write_text("[MAIN] Hello there.\n[OTHER] Hi.\n")
    proc = run_dsm("dialog", script, "--model", tiny_tts, "--voice-repo", tiny_voices, "--quantize", "int3",
                   "-o", tmp_path / "talk.wav")
    assert proc.returncode == 2 and "unknown method" in proc.stderr.decode()
    assert not (tmp_path / "a.wav").exists()
