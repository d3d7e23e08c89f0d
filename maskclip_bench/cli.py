"""The `maskclip-bench` command line: turns commands into calls of maskclip_core and the evaluators.

Each command group lives in its own module under `maskclip_bench.commands` and registers itself on `app`.
User errors (`MaskClipError`) are printed as one line and exit with status 2, never as a traceback.
"""
from __future__ import annotations

import os
import sys

import typer

from maskclip_core.errors import MaskClipError

app = typer.Typer(
    name="maskclip-bench",
    help="Train MaskCLIP and CLIP on open_clip towers, evaluate checkpoints, run ablations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Train MaskCLIP and CLIP on open_clip towers, evaluate checkpoints, run ablations."""


def _register_commands() -> None:
    from maskclip_bench.commands import register_all

    register_all(app)


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise SystemExit(code)


# Commands whose output is a table or a log line per cell, not CLIP_benchmark's per-class progress bars.
QUIET_COMMANDS = ("ablate", "check", "demo")


def quiet_progress(argv: list[str]) -> None:
    """Turn tqdm's bars off for a quiet command (`QUIET_COMMANDS`, or any with --quiet). Process-wide and once, at
    the entry point: tqdm reads TQDM_DISABLE when it is imported, and the evaluators import it with
    CLIP_benchmark, so a setting made later inside the library would not reach it."""
    if (argv and argv[0] in QUIET_COMMANDS) or "--quiet" in argv:
        os.environ.setdefault("TQDM_DISABLE", "1")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    quiet_progress(list(sys.argv[1:] if argv is None else argv))
    _register_commands()
    try:
        app(args=argv, standalone_mode=True)
    except MaskClipError as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"file not found: {exc.filename or exc}")
    except KeyboardInterrupt:
        fail("interrupted", code=130)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
