"""Output files: naming/overwrite rules, incremental writing that survives a kill, Ctrl-C,
and the segmentation feeding the writers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dsmcli.errors import OutputError, UsageError
from dsmcli.outputs import TranscriptOutput, WriterOptions, open_writers, output_paths
from dsmcli.results import EndOfTurn, Word
from dsmcli.outputs.segments import SegmentBuilder, SegmentOptions

SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+?)\n\n", re.S)
VTT_CUE = re.compile(r"((?:\d\d:)?\d\d:\d\d\.\d{3}) --> ((?:\d\d:)?\d\d:\d\d\.\d{3})\n(.+?)\n\n", re.S)


def sentence_words(n_sentences: int, words_per_sentence: int = 3) -> list[Word]:
    words, t = [], 0.0
    for s in range(n_sentences):
        for w in range(words_per_sentence):
            end = "." if w == words_per_sentence - 1 else ""
            words.append(Word(f" w{s}_{w}{end}", round(t, 2), round(t + 0.24, 2)))
            t += 0.32
    return words


def srt_cues(text: str) -> list[tuple[str, ...]]:
    """The cues of an SRT file, asserting the whole file is well formed."""
    cues = SRT_CUE.findall(text)
    assert "".join(f"{n}\n{a} --> {b}\n{t}\n\n" for n, a, b, t in cues) == text
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    return cues


def vtt_cues(text: str) -> list[tuple[str, ...]]:
    assert text.startswith("WEBVTT\n\n")
    body = text[len("WEBVTT\n\n") :]
    cues = VTT_CUE.findall(body)
    assert "".join(f"{a} --> {b}\n{t}\n\n" for a, b, t in cues) == body
    return cues


FORMATS = ["txt", "srt", "vtt", "tsv", "jsonl", "json"]


def test_files_are_valid_after_each_segment(tmp_path):
    writers = open_writers(FORMATS, tmp_path, "talk")
    with TranscriptOutput(writers) as out:
        closed = 0
        for word in sentence_words(4):
            closed_now = len(out.push(word))
            closed += closed_now
            srt = srt_cues((tmp_path / "talk.srt").read_text())
            assert len(srt) == closed  # each cue is on disk as soon as its sentence ends
            assert len(vtt_cues((tmp_path / "talk.vtt").read_text())) == closed
            txt = (tmp_path / "talk.txt").read_text()  # live: finished lines, then the open segment's words
            assert txt.count("\n") == closed and txt.endswith(word.text.strip() + ("\n" if closed_now else ""))
            assert len((tmp_path / "talk.tsv").read_text().splitlines()) == closed + 1
            events = [json.loads(line) for line in (tmp_path / "talk.jsonl").read_text().splitlines()]
            assert [e["type"] for e in events[-2:]] == ["Word", "EndWord"]
        out.close(duration=4.0)
    assert closed == 4
    result = json.loads((tmp_path / "talk.json").read_text())
    assert [s["text"] for s in result["segments"]][0] == " w0_0 w0_1 w0_2."
    assert result["duration"] == 4.0 and len(result["segments"]) == 4


KILLED_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from dsmcli.outputs import TranscriptOutput, open_writers
    from dsmcli.results import Word
    out = TranscriptOutput(open_writers({formats!r}, sys.argv[1], "talk"))
    t = 0.0
    for s in range(3):
        for w in range(3):
            out.push(Word(f" w{{s}}_{{w}}" + ("." if w == 2 else ""), t, t + 0.24))
            t += 0.32
    out.push(Word(" unfinished", t, t + 0.2))
    os.kill(os.getpid(), signal.SIGKILL)  # no close(): a killed process
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_process_leaves_valid_files(tmp_path):
    script = KILLED_SCRIPT.format(formats=FORMATS)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert [c[3] for c in srt_cues((tmp_path / "talk.srt").read_text())] == [
        "w0_0 w0_1 w0_2.",
        "w1_0 w1_1 w1_2.",
        "w2_0 w2_1 w2_2.",
    ]
    assert len(vtt_cues((tmp_path / "talk.vtt").read_text())) == 3
    assert (tmp_path / "talk.tsv").read_text().splitlines()[-1] == "1920\t2800\tw2_0 w2_1 w2_2."
    events = [json.loads(line) for line in (tmp_path / "talk.jsonl").read_text().splitlines()]
    assert len(events) == 20 and events[-2] == {"type": "Word", "text": "unfinished", "start_time": 2.88}
    assert (tmp_path / "talk.json").read_text() == ""  # JSON is written at close only


def test_ctrl_c_closes_the_open_segment_and_writes_json(tmp_path):
    writers = open_writers(["srt", "json", "jsonl"], tmp_path, "talk", options=WriterOptions(model="m"))
    with pytest.raises(KeyboardInterrupt):
        with TranscriptOutput(writers) as out:
            for word in sentence_words(2)[:5]:  # stop inside the second sentence
                out.push(word)
            raise KeyboardInterrupt
    assert [c[3] for c in srt_cues((tmp_path / "talk.srt").read_text())] == ["w0_0 w0_1 w0_2.", "w1_0 w1_1"]
    result = json.loads((tmp_path / "talk.json").read_text())
    assert result["text"] == " w0_0 w0_1 w0_2. w1_0 w1_1" and result["model"] == "m"
    last = json.loads((tmp_path / "talk.jsonl").read_text().splitlines()[-1])
    assert last == {"type": "Done", "duration": None, "words": 5, "interrupted": True}
    assert all(w.closed for w in writers)


def test_output_naming(tmp_path):
    assert output_paths(["srt", "json"], tmp_path, "talk") == {
        "srt": tmp_path / "talk.srt",
        "json": tmp_path / "talk.json",
    }
    assert output_paths(["all"], f"{tmp_path / 'new_dir'}/", "a") == {
        name: tmp_path / "new_dir" / f"a.{name}" for name in ["txt", "vtt", "srt", "tsv", "json"]
    }
    assert output_paths(["srt"], tmp_path / "subs.srt", "ignored") == {"srt": tmp_path / "subs.srt"}
    assert output_paths(["jsonl"], "-", "x") == {"jsonl": None}
    with pytest.raises(UsageError, match="stdout"):
        output_paths(["srt", "vtt"], "-", "x")
    with pytest.raises(UsageError, match="output directory"):
        output_paths(["srt", "vtt"], tmp_path / "subs.srt", "x")
    with pytest.raises(UsageError, match="unknown output format"):
        output_paths(["docx"], tmp_path, "x")


def test_output_file_format_follows_its_extension(tmp_path):
    """-o x.srt writes SRT (not txt); a path without extension is a file unless it is a directory or ends with /."""
    assert output_paths([], tmp_path / "x.srt", "talk") == {"srt": tmp_path / "x.srt"}
    assert output_paths([], str(tmp_path / "x.JSONL"), "talk") == {"jsonl": tmp_path / "x.JSONL"}
    assert output_paths([], tmp_path / "result", "talk") == {"txt": tmp_path / "result"}
    assert output_paths(["vtt"], tmp_path / "result", "talk") == {"vtt": tmp_path / "result"}
    assert output_paths(["srt"], tmp_path / "notes.log", "talk") == {"srt": tmp_path / "notes.log"}
    assert output_paths([], f"{tmp_path / 'new'}/", "talk") == {"txt": tmp_path / "new" / "talk.txt"}
    (tmp_path / "existing").mkdir()
    assert output_paths(["srt"], tmp_path / "existing", "talk") == {"srt": tmp_path / "existing" / "talk.srt"}
    assert output_paths([], None, "talk") == {"txt": Path("talk.txt")}
    assert output_paths(["all"], None, "stdin")["json"] == Path("stdin.json")
    with pytest.raises(UsageError, match=r"names the srt format but -f txt") as error:
        output_paths(["txt"], tmp_path / "x.srt", "talk")
    assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="several formats need an output directory"):
        output_paths(["srt", "json"], tmp_path / "result", "talk")
    for writer in open_writers([], tmp_path / "subs.vtt", "talk"):
        writer.close(0.0)
    assert (tmp_path / "subs.vtt").read_text().startswith("WEBVTT")
    assert not (tmp_path / "result").exists()


def test_refuses_to_overwrite_and_creates_nothing(tmp_path):
    (tmp_path / "talk.srt").write_text("keep me")
    with pytest.raises(OutputError, match=r"talk\.srt exists \(use --force"):
        open_writers(["txt", "srt"], tmp_path, "talk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.srt"]
    assert (tmp_path / "talk.srt").read_text() == "keep me"
    for writer in open_writers(["txt", "srt"], tmp_path, "talk", force=True):
        writer.close()
    assert (tmp_path / "talk.srt").read_text() == ""


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot create directory"):
        open_writers(["srt"], f"{blocker / 'sub'}/", "talk")
    with pytest.raises(OutputError) as error:
        open_writers(["srt"], tmp_path / "file" / "x.srt", "talk")
    assert "\n" not in str(error.value)


def test_stdout_output(capfd):
    (writer,) = open_writers(["jsonl"], "-", "stdin")
    writer.write_word(Word(" héllo", 0.0, 0.5))
    writer.close(1.0)
    out = capfd.readouterr().out
    assert out.splitlines()[0] == '{"type": "Word", "text": "héllo", "start_time": 0.0}'
    assert not sys.stdout.closed
    print("still usable")
    assert capfd.readouterr().out == "still usable\n"


def test_segment_builder_cuts_at_punctuation_gap_turn_and_duration():
    builder = SegmentBuilder(SegmentOptions(gap=1.0, max_duration=5.0))
    pushes = [
        Word(" Hi", 0.0, 0.3),
        Word(" there!", 0.3, 0.6),  # closes segment 0 at once
        Word(" «Quoted", 0.6, 0.9),
        Word(" end.»", 0.9, 1.2),  # closing quote after the period: still a sentence end
        Word(" after", 2.5, 2.8),  # gap 1.3 s > 1.0: nothing pending, no empty segment
        Word(" gap", 4.0, 4.2),  # gap 1.2 s: closes " after"
        EndOfTurn(4.4, 0.9),  # closes " gap"
        Word(" long", 5.0, 6.0),
        Word(" long", 6.0, 9.0),
        Word(" long", 9.0, 10.5),  # 10.5 - 5.0 > 5 s: closes the first two
    ]
    emitted = [[s.text for s in builder.push(item)] for item in pushes]
    assert emitted == [[], [" Hi there!"], [], [" «Quoted end.»"], [], [" after"], [" gap"], [], [], [" long long"]]
    (last,) = builder.finish()
    assert (last.id, last.text, last.start, last.end) == (5, " long", 9.0, 10.5)
    assert builder.finish() == []


def test_segment_builder_options_can_be_turned_off():
    builder = SegmentBuilder(SegmentOptions(split_on_punctuation=False, split_on_end_of_turn=False, max_duration=None))
    for item in [Word(" a.", 0, 1), EndOfTurn(1.0, 0.99), Word(" b?", 100, 101)]:
        assert builder.push(item) == []
    assert [s.text for s in builder.finish()] == [" a. b?"]
    with pytest.raises(ValueError):
        SegmentOptions(gap=0)


def test_open_writers_closes_what_it_opened_on_failure(tmp_path, monkeypatch):
    opened = []
    real_open = open

    def flaky_open(path, *args, **kwargs):
        if str(path).endswith(".vtt"):
            raise PermissionError(13, "Permission denied")
        stream = real_open(path, *args, **kwargs)
        opened.append(stream)
        return stream

    monkeypatch.setattr("dsmcli.outputs.files.open", flaky_open, raising=False)
    with pytest.raises(OutputError, match=r"talk\.vtt: Permission denied"):
        open_writers(["srt", "vtt"], tmp_path, "talk")
    assert opened and all(stream.closed for stream in opened)
    assert os.path.exists(tmp_path / "talk.srt")
