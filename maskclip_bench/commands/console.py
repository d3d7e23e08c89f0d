"""The rich console every command prints its tables through, and the command line as typed (`command_line`).

On a terminal rich fits the terminal. Piped into a file or a CI log it would assume 80 columns and wrap table cells
mid-word; there the tables are printed at LOG_WIDTH columns instead (an explicit ``COLUMNS`` still wins).
"""
from __future__ import annotations

import os
import shlex
import sys

from rich.console import Console

LOG_WIDTH = 200


def command_console(stderr: bool = False) -> Console:
    """A Console on stdout (or stderr) that does not wrap tables at 80 columns when the stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=LOG_WIDTH if wide else None)


def command_line(fallback: str) -> str:
    """``maskclip-bench`` and this process's arguments, shell-quoted: the "Produced by" line of a table or baseline;
    `fallback` when the process has no arguments."""
    return "maskclip-bench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else fallback
