"""`maskclip-bench check`: the CI regression check against a committed baseline (see maskclip_bench.experiments.regression)."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from maskclip_bench.commands.console import command_console, command_line


def check_command(
    baseline: Path = typer.Option(Path("results/baselines/ci.json"), "--baseline", help="baseline JSON file"),
    update: bool = typer.Option(False, "--update", help="rewrite the baseline from --seeds fresh runs"),
    seeds: int = typer.Option(3, "--seeds", help="with --update: runs (seeds) whose spread sets the tolerances"),
    k: float = typer.Option(3.0, "--k", help="with --update: tolerance = max(k * std over seeds, floor)"),
    steps: int = typer.Option(None, "--steps", help="with --update: training steps (default: kept from the file)"),
    threads: int = typer.Option(None, "--threads", help="torch threads of the check run (default: from baseline)"),
    drop_at_chance: bool = typer.Option(False, "--drop-at-chance",
                                        help="with --update: leave out metrics whose tolerance reaches chance "
                                             "(listed in the file) instead of refusing to write"),
    set_: list[str] = typer.Option([], "--set", help="perturb the checked run's training config, key=value "
                                                     "(repeatable; to show what the check catches)"),
) -> None:
    """Train the tiny model for a fixed short budget, evaluate, and fail (exit 1) naming any metric that
    fell below its baseline (or, for losses, left it on either side) by more than the recorded tolerance."""
    from rich.table import Table

    from maskclip_bench.experiments import regression as check
    from maskclip_core.errors import ConfigError

    console = command_console()
    if update:
        if set_:
            raise ConfigError("--set perturbs a checked run; a baseline is written from the unperturbed settings")
        if seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}")
        settings = check.settings_of(baseline)  # an older format's settings are kept too
        if steps is not None:
            settings.steps = steps
        if threads is not None:
            settings.threads = threads
        runs, start = [], time.time()
        for i in range(seeds):
            runs.append(check.measure(settings, seed=settings.seed + i))
            console.print(f"seed {settings.seed + i}: " + ", ".join(f"{m} {v:.4f}" for m, v in runs[-1].items()))
        command = command_line("maskclip-bench check --update")
        data = check.build_baseline(settings, runs, command, k=k, wall_time_s=(time.time() - start) / seeds,
                                    drop_at_chance=drop_at_chance)
        check.write_baseline(baseline, data)
        dropped = f"; left out at chance: {', '.join(data['dropped_at_chance'])}" if data["dropped_at_chance"] else ""
        console.print(f"wrote {baseline} ({seeds} seed(s), {data['wall_time_s_per_run']:.0f}s per run){dropped}")
        return

    data = check.load_baseline(baseline)
    if threads is not None:
        data = {**data, "settings": {**data["settings"], "threads": threads}}
    if set_:  # a bad key or value is one line (exit 2) before the training starts
        check.train_config(check.CheckSettings.from_dict(data["settings"]), 0, Path("unused"), set_)
    outcome = check.run_check(data, overrides=set_)
    perturbed = f", run with --set {' '.join(set_)}" if set_ else ""
    table = Table(title=f"check against {baseline} ({outcome.wall_time_s:.0f}s{perturbed})")
    for column in ("metric", "value", "baseline", "tolerance", "chance", "status"):
        table.add_column(column)
    failed = {f.metric for f in outcome.failures}
    for name, entry in data["metrics"].items():
        value = outcome.metrics.get(name)
        table.add_row(name, "-" if value is None else f"{value:.4f}", f"{entry['value']:.4f}",
                      f"{entry['tolerance']:.4f}", "-" if entry.get("chance") is None else f"{entry['chance']:.4f}",
                      "[red]FAIL[/red]" if name in failed else "ok")
    console.print(table)
    if outcome.failures:
        for failure in outcome.failures:
            typer.secho(f"regression: {failure}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `check`."""
    app.command("check")(check_command)
