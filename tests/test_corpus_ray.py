"""`dsm transcribe --ray` against a real local Ray cluster started by this test (issue 14): the outputs are the
single-process run's, the manifest is complete, a bad input is a failed row (exit 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SINGLE_THREAD_ENV, subprocess_env
from test_corpus import CLIPS, EXTENSIONS, FORMATS, clips, corpus, reference, rows_of, same_outputs  # noqa: F401

ray = pytest.importorskip("ray")

# the reference runs in this process: one torch thread, as the actors (outputs are the same bytes at the same
# batch size and thread count)
pytestmark = pytest.mark.usefixtures("torch_single_thread")

CLUSTER_CPUS = 4  # logical CPUs: two actors and the decode tasks; bounded whatever the machine
RAY_SECONDS = 480


@pytest.fixture(scope="module")
def cluster(hf_cache):
    """A local Ray cluster (its workers inherit this process's offline HF cache and PYTHONPATH)."""
    context = ray.init(num_cpus=CLUSTER_CPUS, include_dashboard=False, logging_level="ERROR",
                       log_to_driver=False, runtime_env={"env_vars": SINGLE_THREAD_ENV},
                       _node_ip_address="127.0.0.1")  # loopback only: no traffic on the machine's other interfaces
    yield context.address_info["gcs_address"]
    ray.shutdown()


def test_ray_run_matches_the_single_process_run(tiny_stt, corpus, reference, cluster, tmp_path):  # noqa: F811
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not a RIFF header\n" * 20)
    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    inputs = [str(p) for p in clips(corpus)] + [str(bad)]
    proc = subprocess.run(
        [sys.executable, "-m", "dsmcli", "transcribe", *inputs, "-m", tiny_stt, *FORMATS, "-o", f"{out}/",
         "-b", "1", "--manifest", str(manifest), "--ray", cluster, "--ray-actors", "2"],
        env=subprocess_env(SINGLE_THREAD_ENV), capture_output=True, timeout=RAY_SECONDS)
    err = proc.stderr.decode()
    assert proc.returncode == 5, err
    errors = [line for line in err.splitlines() if line.startswith("dsm: error: ")]
    assert len(errors) == 1 and "bad.wav" in errors[0], err
    rows = {r["path"]: r for r in rows_of(manifest)}
    assert set(rows) == set(inputs) and len(rows_of(manifest)) == len(inputs)  # complete, each input once
    assert rows[str(bad)]["status"] == "failed" and "bad.wav" in rows[str(bad)]["error"]
    for path in inputs[:-1]:
        row = rows[path]
        assert row["status"] == "ok" and row["words"] > 0 and row["audio_seconds"] == pytest.approx(3.0, abs=1e-3)
        assert sorted(Path(p).name for p in row["outputs"]) == sorted(f"{Path(path).stem}.{e}" for e in EXTENSIONS)
    assert same_outputs(out, reference)
    json.loads((out / "clip0.json").read_text())
    # the actors wrote them (Ray Data hands batches to whichever actor is ready first: one may take them all)
    workers = {row["worker"] for row in rows.values() if row["status"] == "ok"}
    assert workers and all(worker.rpartition(":")[2].isdigit() for worker in workers)
