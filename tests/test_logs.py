"""Library code reports through the ``dsmcli`` logger (dsmcli/logs.py), never ``print``: the server's step loop
logs an unexpected failure as one ``dsm: error:`` line and fails the streams; an application can silence it."""

from __future__ import annotations

import logging
import subprocess
import sys

from dsmcli.engine.scheduler import SlotScheduler, SlotStream, StepReport, StreamEnd
from dsmcli.logs import get_logger


class BrokenBatch:
    """A task batch whose step raises (a bug or a device failure)."""

    batch_size = 1

    def open(self, index, stream):
        return True

    def start(self, fresh):
        return []

    def stop(self, index):
        pass

    def step(self):
        raise RuntimeError("boom")

    def wait(self, timeout):
        return False


def _run_broken(stream: SlotStream) -> StreamEnd:
    scheduler = SlotScheduler(BrokenBatch(), max_waiting=None, name="unit-steps")
    with scheduler:
        scheduler.open(stream)
        ends = [event for event in stream.events(timeout=10) if isinstance(event, StreamEnd)]
    return ends[0]


def test_step_loop_failure_is_one_error_line_and_fails_the_stream(capsys):
    stream = SlotStream()
    try:
        _run_broken(stream)
    except Exception as exc:  # events() raises the stream's error
        assert str(exc) == "internal error"
    else:
        raise AssertionError("the stream did not fail")
    lines = capsys.readouterr().err.splitlines()
    assert "dsm: error: unit-steps: RuntimeError: boom" in lines


def test_an_application_silences_the_library_logger(capsys):
    logger = logging.getLogger("dsmcli")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        get_logger("dsmcli.engine.scheduler").error("not shown")
    finally:
        logger.setLevel(level)
    get_logger("engine.x").warning("shown %d", 1)
    assert capsys.readouterr().err == "dsm: warning: shown 1\n"


def test_plain_python_gets_the_cli_lines_without_configuring_logging():
    code = ("from dsmcli.logs import get_logger; log = get_logger('dsmcli.kernels');"
            "log.info('building x'); log.warning('w'); log.debug('hidden')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "dsm: building x\ndsm: warning: w\n", done.stderr
