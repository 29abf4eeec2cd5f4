"""`dsm voices` that finds no voice: exit code 3 (as a model file that is not there) and one line, nothing on stdout."""

from __future__ import annotations

import pytest

from dsmcli.cli import main


def _dsm(capfd, *args) -> tuple[int, str, str]:
    capfd.readouterr()
    try:
        main([str(arg) for arg in args])
        code = 0
    except SystemExit as exited:
        code = exited.code if isinstance(exited.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_no_voices_is_exit_3_and_one_line(capfd, tiny_tts, tmp_path, json_flag):
    empty = tmp_path / "voices"
    empty.mkdir()
    (empty / "readme.txt").write_text("no voices here\n")
    code, out, err = _dsm(capfd, "voices", "--model", tiny_tts, "--voice-repo", empty, *json_flag)
    assert (code, out) == (3, ""), err
    assert err.count("\n") == 1 and err.startswith("dsm: error: no voices found in ") and "--voice-repo" in err, err


def test_voices_found_is_exit_0(capfd, tiny_tts, tiny_voices):
    code, out, err = _dsm(capfd, "voices", "--model", tiny_tts, "--voice-repo", tiny_voices)
    assert (code, err) == (0, "") and out.split() == ["voices/alice.wav", "voices/bob.wav"]
