"""`dsm kernels`: build the native CPU kernels ahead of time (tools/setup.sh runs it) and report each."""

from __future__ import annotations

import sys

import typer

from dsmcli.errors import EXIT_RUNTIME


def kernels_cmd(
    status: bool = typer.Option(False, "--status", help="Report what is built without building anything."),
) -> None:
    """Build the native CPU kernels (int8 / int4 LM, depformer, Mimi streaming) once, ahead of the first run; report each.

    Kernels are built into $XDG_CACHE_HOME/dsmcli/kernels (default ~/.cache/dsmcli/kernels), ~15 s each. A
    kernel whose build failed before is retried here (never at run time). Exit 1 if any could not be built:
    dsm still works, on slower pure-torch paths.
    """
    from dsmcli import kernels

    print(f"native kernels in {kernels.cache_dir()}", file=sys.stderr, flush=True)
    failed = 0
    for kernel in kernels.KERNELS.values():
        if not status and not kernels.disabled() and not kernel.is_built:
            print(f"{kernel.name:<18} building...", end="\r" if sys.stdout.isatty() else "\n", flush=True)
        report = kernels.build_report(kernel, status_only=status)
        seconds = f" in {report.seconds:.1f} s" if report.state == "built" else ""
        reason = f": {report.reason}" if report.reason else ""
        print(f"{report.name:<18} {report.state}{seconds}{reason}", flush=True)
        failed += report.state == "failed"
    if failed:
        print(f"dsm: error: {failed} native kernel(s) not built; dsm runs without them on slower pure-torch paths. "
              f"To build them: {kernels.REMEDY}", file=sys.stderr, flush=True)
        sys.exit(EXIT_RUNTIME)
