"""The `maskclip-bench` CLI run in-process for tests (its `main`, or typer's CliRunner), shared by the test files
that drive it."""
from __future__ import annotations

from typing import Any


def main_exit(capsys: Any, *args: str) -> tuple[int, str]:
    """Run the console script's `main(ARGS)` in this process; (exit code, stderr) as a user would see them."""
    import pytest

    from maskclip_bench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def invoke_cli(args: list[str]) -> Any:
    """Run `maskclip-bench ARGS` in this process; exceptions propagate (not swallowed into the result)."""
    from typer.testing import CliRunner

    from maskclip_bench.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args, catch_exceptions=False)
