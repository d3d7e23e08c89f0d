"""CLI command groups. Each module has `register(app)`; add new modules to `_MODULES`."""
from __future__ import annotations

import importlib

import typer

_MODULES = ["train_cmd", "evaluate_cmd", "export_cmd", "report_cmd", "demo_cmd", "ablate_cmd", "check_cmd", "bench_cmd"]


def register_all(app: typer.Typer) -> None:
    """Register every command module's commands on the app."""
    for name in _MODULES:
        importlib.import_module(f"maskclip_bench.commands.{name}").register(app)
