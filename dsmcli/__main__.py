"""``python -m dsmcli`` and the ``dsm`` script.

A Ctrl-C while the CLI's own modules load ends with one line and exit code 130, like a Ctrl-C later on
(``dsmcli.cli.main``); once the process is exiting with 130, a further Ctrl-C (while threads join and buffers
flush) ends it at once instead of printing the traceback Python prints there.
"""

import os
import signal
import sys

EXIT_INTERRUPTED = 130  # dsmcli.errors.EXIT_INTERRUPTED, not imported: this module must load in milliseconds


def _quiet_second_ctrl_c(signum: int, frame: object) -> None:
    os._exit(EXIT_INTERRUPTED)


def run() -> None:
    try:
        from dsmcli.cli import main
    except KeyboardInterrupt:
        print("dsm: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    try:
        main()
    except SystemExit as exiting:
        if exiting.code == EXIT_INTERRUPTED:
            signal.signal(signal.SIGINT, _quiet_second_ctrl_c)
        raise


if __name__ == "__main__":
    run()
