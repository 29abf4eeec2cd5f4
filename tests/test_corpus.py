"""Corpus runs of `dsm transcribe` (issue 14): input expansion, --shard, --manifest, atomic outputs, --resume
after SIGKILL, per-input failures, and the Ray Data callable class in this process (the Ray cluster test is
in test_corpus_ray.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile

from conftest import SINGLE_THREAD_ENV, subprocess_env
from dsmcli.cli import main
from dsmcli.constants import SAMPLE_RATE
from dsmcli.outputs import atomic
from dsmcli.corpus.inputs import AUDIO_EXTENSIONS, InputSelection, Shard, expand_inputs, shard_of
from dsmcli.corpus.manifest import read_manifest

CLIP_SECONDS = 3.0
CLIPS = 6
FORMATS = ("-f", "srt", "-f", "json", "-f", "txt")
EXTENSIONS = ("srt", "json", "txt")
RUN_SECONDS = 300

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def dsm_code(capfd, *args) -> tuple[int, str]:
    """``dsm ARGS`` in this process: (exit code, stderr)."""
    capfd.readouterr()
    try:
        main([str(arg) for arg in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capfd.readouterr().err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bria_24k) -> Path:
    """``CLIPS`` different 3 s WAV clips of speech in a folder (one in a subfolder)."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "sub").mkdir()
    for i in range(CLIPS):
        target = folder / "sub" if i == CLIPS - 1 else folder
        soundfile.write(target / f"clip{i}.wav", bria_24k(CLIP_SECONDS, offset=1.5 * i), SAMPLE_RATE,
                        subtype="PCM_16")
    (folder / "notes.txt").write_text("not audio, and not taken from a directory")
    return folder


def clips(corpus: Path) -> list[Path]:
    return sorted(corpus.glob("*.wav")) + [corpus / "sub" / f"clip{CLIPS - 1}.wav"]


def plain_run(model: str, paths: list[Path], batch: int, out: Path) -> dict[str, bytes]:
    """Outputs of a plain, uninterrupted run (no corpus flag) at ``--batch-size batch``: file name → bytes."""
    try:
        main(["transcribe", *map(str, paths), "-m", model, *FORMATS, "-o", f"{out}/", "-b", str(batch)])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    files = {path.name: path.read_bytes() for path in out.iterdir()}
    assert len(files) == len(paths) * len(EXTENSIONS)
    return files


@pytest.fixture(scope="module")
def reference(tiny_stt, corpus, tmp_path_factory) -> dict[str, bytes]:
    """Outputs of a plain run at batch 1: its slot ran the files before (the runs compared with it use one slot
    too; outputs are the same bytes at the same batch size only, the linears' rounding depends on it)."""
    files = plain_run(tiny_stt, clips(corpus), 1, tmp_path_factory.mktemp("reference"))
    assert all(json.loads(files[f"clip{i}.json"])["segments"] for i in range(CLIPS))
    return files


@pytest.fixture(scope="module")
def reference_b2(tiny_stt, corpus, tmp_path_factory) -> dict[str, bytes]:
    """Outputs of a plain run at batch 2 (two slots, each reused)."""
    return plain_run(tiny_stt, clips(corpus), 2, tmp_path_factory.mktemp("reference_b2"))


def same_output(name: str, data: bytes, reference: dict[str, bytes]) -> bool:
    """The reference's bytes, JSON included (word probabilities and log-probabilities too): a file's outputs do not
    depend on what ran in its batch slot before, on the slot, nor on its batch mates (tests/test_slot_reset.py)."""
    return data == reference[name]


def same_outputs(folder: Path, reference: dict[str, bytes]) -> bool:
    """``folder`` holds exactly the reference's files (nothing else), with the same content."""
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    return set(files) == set(reference) and all(same_output(n, data, reference) for n, data in files.items())


def rows_of(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- inputs, shards


def test_directories_glob_and_lists_expand_to_sorted_unique_paths(corpus, tmp_path, monkeypatch):
    top = [str(p) for p in sorted(corpus.glob("*.wav"))]
    nested = str(corpus / "sub" / f"clip{CLIPS - 1}.wav")
    assert expand_inputs(InputSelection((str(corpus),)), AUDIO_EXTENSIONS) == top  # not notes.txt, not sub/
    assert expand_inputs(InputSelection((str(corpus),), recursive=True), AUDIO_EXTENSIONS) == sorted(top + [nested])
    assert expand_inputs(InputSelection((str(corpus),), glob="*[13].wav"), AUDIO_EXTENSIONS) == [top[1], top[3]]
    (corpus / ".clip0.wav.partial-1").write_bytes(b"")  # a temporary of a running job is never an input
    try:
        assert expand_inputs(InputSelection((str(corpus),)), AUDIO_EXTENSIONS) == top
    finally:
        (corpus / ".clip0.wav.partial-1").unlink()
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{top[2]}\n\n  {top[0]}  \n{top[2]}\n")
    assert expand_inputs(InputSelection((top[1],), inputs_list=str(listing)), AUDIO_EXTENSIONS) == [
        top[1], top[2], top[0]]
    monkeypatch.setattr(sys, "stdin", open(listing, encoding="utf-8"))
    assert expand_inputs(InputSelection(inputs_list="-"), AUDIO_EXTENSIONS) == [top[2], top[0]]
    monkeypatch.chdir(corpus)
    assert expand_inputs(InputSelection(glob="*.txt"), AUDIO_EXTENSIONS) == ["notes.txt"]


def test_shards_are_disjoint_stable_and_cover_everything():
    paths = [f"audio/{i:05d}.mp3" for i in range(3000)]
    parts = [Shard.parse(f"{i}/3").select(paths) for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == paths  # together the whole, each path once
    assert all(900 < len(part) < 1100 for part in parts)  # and balanced
    # a fixed function of the path (SHA-256), not of the process: the same on every task of a job array
    assert [shard_of(p, 3) for p in paths[:8]] == [shard_of(p, 3) for p in paths[:8]]
    assert shard_of("audio/00000.mp3", 1000) == int.from_bytes(
        __import__("hashlib").sha256(b"audio/00000.mp3").digest()[:8], "big") % 1000
    assert shard_of("./audio//00000.mp3", 7) == shard_of("audio/00000.mp3", 7)
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        with pytest.raises(Exception, match="--shard"):
            Shard.parse(bad)


def test_cli_shards_split_a_directory(capfd, tiny_stt, corpus, reference, tmp_path):
    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    for i in (1, 2, 3):
        code, err = dsm_code(capfd, "transcribe", corpus, "-r", "-m", tiny_stt, *FORMATS, "-o", f"{out}/",
                             "-b", "1", "--shard", f"{i}/3", "--manifest", manifest)
        assert (code, err) == (0, "")
    rows = rows_of(manifest)
    assert sorted(Path(r["path"]).name for r in rows) == [f"clip{i}.wav" for i in range(CLIPS)]
    assert {r["status"] for r in rows} == {"ok"}
    assert same_outputs(out, reference)


# ---------------------------------------------------------------------------------------------- manifest, failures


def test_a_failing_input_is_a_failed_row_the_others_are_written_exit_5(capfd, tiny_stt, corpus, reference, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not a RIFF header\n" * 20)
    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    inputs = [str(p) for p in clips(corpus)[:3]] + [str(bad), str(tmp_path / "missing.wav")]
    code, err = dsm_code(capfd, "transcribe", *inputs, "-m", tiny_stt, *FORMATS, "-o", f"{out}/", "-b", "1",
                         "--manifest", manifest)
    assert code == 5
    assert len(err.splitlines()) == 2 and all(line.startswith("dsm: error: ") for line in err.splitlines()), err
    rows = {r["path"]: r for r in rows_of(manifest)}
    assert set(rows) == set(inputs)
    for path in (str(bad), str(tmp_path / "missing.wav")):
        row = rows[path]
        assert row["status"] == "failed" and row["outputs"] == [] and Path(path).name in row["error"]
        assert "\n" not in row["error"] and row["error"] in err
    for path in inputs[:3]:
        row, stem = rows[path], Path(path).stem
        assert row["status"] == "ok" and row["error"] is None and row["model"] == tiny_stt
        assert row["audio_seconds"] == pytest.approx(CLIP_SECONDS, abs=1e-3) and row["wall_seconds"] > 0
        document = json.loads((out / f"{stem}.json").read_bytes())
        assert row["words"] == sum(len(s["words"]) for s in document["segments"]) > 0
        assert sorted(row["outputs"]) == sorted(str(out / f"{stem}.{ext}") for ext in EXTENSIONS)
        for ext in EXTENSIONS:
            assert same_output(f"{stem}.{ext}", (out / f"{stem}.{ext}").read_bytes(), reference)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"clip{i}.{e}" for i in range(3) for e in EXTENSIONS)


def test_an_input_failing_midway_leaves_no_output_in_a_recorded_run(capfd, tiny_stt, bria_24k, tmp_path):
    nan = bria_24k(CLIP_SECONDS).copy()
    nan[len(nan) // 2 :] = float("nan")  # decodes fine until half way: the writers are open by then
    soundfile.write(tmp_path / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    code, err = dsm_code(capfd, "transcribe", tmp_path / "nan.wav", "-m", tiny_stt, *FORMATS, "-o", f"{out}/",
                         "--manifest", manifest)
    assert code == 4 and "NaN" in err
    assert [r["status"] for r in rows_of(manifest)] == ["failed"]
    assert list(out.iterdir()) == []  # no partial file under a final name, and no temporary left


def test_atomic_files_appear_complete_or_not_at_all(tmp_path):
    final = tmp_path / "a.srt"
    (tmp_path / ".a.srt.partial-999999").write_text("left by a killed run")
    stream = atomic.open_text(final)
    stream.write("1\n")
    stream.flush()
    assert not final.exists() and [p.name for p in tmp_path.iterdir()] == [f".a.srt.partial-{os.getpid()}"]
    stream.write("done\n")
    stream.close()
    assert [p.name for p in tmp_path.iterdir()] == ["a.srt"] and final.read_text() == "1\ndone\n"
    dropped = atomic.open_binary(tmp_path / "b.wav")
    dropped.write(b"RIFF")
    dropped.discard()
    dropped.close()
    assert [p.name for p in tmp_path.iterdir()] == ["a.srt"]


# ---------------------------------------------------------------------------------------------- SIGKILL, --resume


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_then_resumed_run_finishes_every_output_identical(stop, tiny_stt, corpus, reference, tmp_path):
    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    args = [sys.executable, "-m", "dsmcli", "transcribe", str(corpus), "-r", "-m", tiny_stt, *FORMATS,
            "-o", f"{out}/", "-b", "1", "--manifest", str(manifest), "--resume"]
    env = subprocess_env(SINGLE_THREAD_ENV)
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: set[str] = set()
    deadline = time.monotonic() + RUN_SECONDS
    try:
        while time.monotonic() < deadline and process.poll() is None:
            for path in out.glob("*") if out.is_dir() else []:
                if not path.name.startswith("."):  # a final name: must hold the complete output, always
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue
                    assert same_output(path.name, data, reference), f"{path.name} visible before it was complete"
                    seen.add(path.name)
            if manifest.exists() and sum(r["status"] == "ok" for r in rows_of(manifest)) >= 2:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    if stop == signal.SIGINT:  # Ctrl-C: exit 130, one line; the unfinished input left nothing behind
        assert process.returncode == 130 and stderr.decode().startswith("dsm: error: interrupted;"), stderr
        assert len(stderr.decode().splitlines()) == 1 and not [p for p in out.iterdir() if ".partial-" in p.name]
    else:
        assert process.returncode == -signal.SIGKILL
    first = {Path(r["path"]).name: r["status"] for r in rows_of(manifest)}
    done = sorted(name for name, status in first.items() if status == "ok")
    assert 2 <= len(done) < CLIPS
    for path in out.iterdir():
        if not path.name.startswith("."):
            assert same_output(path.name, path.read_bytes(), reference)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}

    rerun = subprocess.run(args, env=env, capture_output=True, timeout=RUN_SECONDS)
    assert rerun.returncode == 0 and rerun.stderr == b"", rerun.stderr.decode()
    second = rows_of(manifest)[len(first):]
    assert sorted(Path(r["path"]).name for r in second) == [f"clip{i}.wav" for i in range(CLIPS)]
    statuses = {Path(r["path"]).name: r["status"] for r in second}
    assert sorted(n for n, s in statuses.items() if s == "skipped") == done  # never transcribed twice
    assert all(s == "ok" for n, s in statuses.items() if n not in done)
    assert same_outputs(out, reference)  # every output complete, no temporary left
    for name, stamp in stamps.items():
        if Path(name).stem + ".wav" in done:
            assert (out / name).stat().st_mtime_ns == stamp
    last = read_manifest(manifest)
    assert {Path(p).name for p, row in last.items() if row.status in ("ok", "skipped")} == set(statuses)


def test_resume_without_file_outputs_or_with_stdin_is_refused_or_reruns(capfd, tiny_stt, corpus, tmp_path):
    code, err = dsm_code(capfd, "transcribe", "-", "-m", tiny_stt, "--resume")
    assert code == 2 and err.startswith("dsm: error: --resume")


# ---------------------------------------------------------------------------------------------- Ray Data class


def test_the_ray_data_callable_class_writes_the_same_outputs(tiny_stt, corpus, reference, reference_b2, tmp_path):
    import numpy as np

    from dsmcli.corpus.ray_api import Transcribe, decode_audio

    # 2 slots, as reference_b2, but other slots, batch mates and slot histories: clip2 runs in a fresh slot
    # (it followed clip0 or clip1 there), clip0 in slot 1 beside clip2, clip1 after one of them
    paths = [str(p) for p in (clips(corpus)[2], *clips(corpus)[:2])] + [str(tmp_path / "missing.wav")]
    transcribe = Transcribe(tiny_stt, str(tmp_path), ["srt", "json", "txt"], batch_size=2)
    rows = [decode_audio({"path": p}) for p in paths]
    batch = {"path": np.array(paths), "audio": [r["audio"] for r in rows],
             "error": np.array([r["error"] for r in rows])}
    result = transcribe(batch)
    assert result["status"] == ["ok", "ok", "ok", "failed"] and result["exit_code"] == [0, 0, 0, 4]
    assert "missing.wav" in result["error"][3] and all(w > 0 for w in result["words"][:3])
    for path in paths[:3]:
        for ext in EXTENSIONS:
            name = f"{Path(path).stem}.{ext}"
            assert same_output(name, (tmp_path / name).read_bytes(), reference_b2)
    again = Transcribe(tiny_stt, str(tmp_path / "again"), ["srt", "json", "txt"])({"path": np.array(paths[:1])})
    assert again["status"] == ["ok"]  # without an audio column, the actor decodes the file itself
    # one fresh slot; in the reference, clip2's slot had run clip0 and clip1 before
    assert same_outputs(tmp_path / "again", {n: reference[n] for n in ("clip2.srt", "clip2.json", "clip2.txt")})


# ---------------------------------------------------------------------------------------------- dsm speak


def test_speak_corpus_records_resumes_and_writes_atomically(capfd, tiny_tts, tiny_voices, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    sentences = ["Hello there, how are you?", "The weather is fine today.", "Streams of speech.", "One more."]
    for i, sentence in enumerate(sentences):
        (texts / f"t{i}.txt").write_text(sentence)
    (texts / "bad.txt").write_bytes(b"ok \xc3\x28 no")  # invalid UTF-8
    tts = ["-m", tiny_tts, "--voice-repo", tiny_voices, "--voice", "voices/alice.wav", "--temperature", "0",
           "--srt"]
    plain, out, manifest = tmp_path / "plain", tmp_path / "out", tmp_path / "m.jsonl"
    code, err = dsm_code(capfd, "speak", *sorted(texts.glob("t*.txt")), *tts, "-o", f"{plain}/")
    assert code == 0, err
    code, err = dsm_code(capfd, "speak", texts, *tts, "-o", f"{out}/", "--manifest", manifest, "--shard", "1/1")
    errors = [line for line in err.splitlines() if not line.startswith("dsm: wrote ")]  # speak names each file
    assert code == 5 and len(errors) == 1 and "bad.txt" in errors[0]
    rows = {Path(r["path"]).name: r for r in rows_of(manifest)}
    assert rows["bad.txt"]["status"] == "failed" and "UTF-8" in rows["bad.txt"]["error"]
    for i, sentence in enumerate(sentences):
        row = rows[f"t{i}.txt"]
        assert row["status"] == "ok" and row["characters"] == len(sentence) and row["audio_seconds"] > 0
        assert sorted(Path(p).name for p in row["outputs"]) == [f"t{i}.srt", f"t{i}.wav"]
        for ext in ("wav", "srt"):  # same bytes as the plain run
            assert (out / f"t{i}.{ext}").read_bytes() == (plain / f"t{i}.{ext}").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"t{i}.{e}" for i in range(4) for e in ("wav", "srt"))
    (out / "t2.srt").unlink()  # as if killed between its two renames
    code, err = dsm_code(capfd, "speak", texts, *tts, "-o", f"{out}/", "--manifest", manifest, "--resume")
    assert code == 5
    again = {Path(r["path"]).name: r["status"] for r in rows_of(manifest)[len(rows):]}
    assert again == {"t0.txt": "skipped", "t1.txt": "skipped", "t2.txt": "ok", "t3.txt": "skipped",
                     "bad.txt": "failed"}
    assert (out / "t2.srt").read_bytes() == (plain / "t2.srt").read_bytes()
