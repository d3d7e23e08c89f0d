"""`maskclip-bench report`: benchmark tables (markdown + CSV) from all evaluation records, and
`comparison.md` (our CLIP vs MaskCLIP beside the published numbers; see maskclip_bench.results.comparison); with
`--curves RUN`, training curves of run folders instead (see maskclip_bench.results.curves)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskclip_bench.commands.console import command_line
from maskclip_bench.commands.options import FLICKR_SPLIT


def report_command(
    results_dir: Path = typer.Option(Path("results/runs"), "--results-dir", help="folder of evaluation records"),
    out: Path = typer.Option(Path("results"), "--out", help="folder for benchmark.md/.csv and benchmark_long.csv"),
    ablations_dir: Path = typer.Option(Path("results/ablations"), "--ablations-dir",
                                       help="ablation cells whose records also feed comparison.md"),
    curves: Optional[list[Path]] = typer.Option(
        None, "--curves", help="training run folder (repeat for several); draw its metrics.jsonl curves instead "
                               "of the benchmark tables"),
    curves_out: Path = typer.Option(Path("results/curves"), "--curves-out", help="folder for the curve PNGs"),
    suite: Optional[str] = typer.Option(None, "--suite", help="a standard suite (datacomp, vtab, vtab+, "
                                        "imagenet_robustness, retrieval, compositional): write suite_<name>.md/.csv "
                                        "from the records, with the published reference rows, instead of the "
                                        "benchmark tables"),
    flickr_split: str = FLICKR_SPLIT,
) -> None:
    """One row per checkpoint, one column per dataset/metric (latest record wins); see maskclip_bench.results.report.
    With --curves: one PNG per loss/eval metric, every run against samples seen and wall seconds."""
    if curves:
        _curves(curves, curves_out)
        return
    if suite is not None:
        _suite(suite, flickr_split, results_dir, out)
        return
    if flickr_split != "karpathy":
        from maskclip_core.errors import DataError

        raise DataError("--flickr-split picks the Flickr30K column of a --suite table; give --suite datacomp or "
                        "retrieval")
    from maskclip_bench.results.comparison import write_comparison
    from maskclip_bench.results.report import write_report

    files = write_report(results_dir, out)

    command = command_line("maskclip-bench report")
    comparison = write_comparison([results_dir, ablations_dir], out, command)
    typer.echo(f"{len(files.table)} checkpoint(s) from {files.num_records} record(s): "
               f"{files.markdown}, {files.csv}, {files.long_csv}, {comparison}")


def _suite(name: str, flickr_split: str, results_dir: Path, out: Path) -> None:
    from maskclip_bench.results.suite_table import write_suite_table

    command = command_line(f"maskclip-bench report --suite {name} --flickr-split {flickr_split}")
    md, csv, count = write_suite_table(name, results_dir, out, command, flickr_split)
    typer.echo(f"{count} checkpoint(s) scored on {name}: {md}, {csv}")


def _curves(runs: list[Path], out: Path) -> None:
    from maskclip_bench.results.curves import load_curves, plot_curves

    frame = load_curves(runs)
    written = plot_curves(frame, out)
    typer.echo(f"{len(written)} curve plot(s) of {len(runs)} run(s) in {out}:")
    for path in written:
        typer.echo(f"  {path}")


def register(app: typer.Typer) -> None:
    """Add `report`."""
    app.command("report")(report_command)
