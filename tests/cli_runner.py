"""The `maskclip-bench` CLI run in-process for tests (typer's CliRunner), shared by the test files that drive it."""
from __future__ import annotations

from typing import Any


def invoke_cli(args: list[str]) -> Any:
    """Run `maskclip-bench ARGS` in this process; exceptions propagate (not swallowed into the result)."""
    from typer.testing import CliRunner

    from maskclip_bench.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args, catch_exceptions=False)
