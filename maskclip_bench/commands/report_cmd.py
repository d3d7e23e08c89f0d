"""`maskclip-bench report`: benchmark tables (markdown + CSV) from all evaluation records, and
`comparison.md` (our CLIP vs MaskCLIP beside the published numbers; see maskclip_bench.comparison)."""
from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    results_dir: Path = typer.Option(Path("results/runs"), "--results-dir", help="folder of evaluation records"),
    out: Path = typer.Option(Path("results"), "--out", help="folder for benchmark.md/.csv and benchmark_long.csv"),
    ablations_dir: Path = typer.Option(Path("results/ablations"), "--ablations-dir",
                                       help="ablation cells whose records also feed comparison.md"),
) -> None:
    """One row per checkpoint, one column per dataset/metric (latest record wins); see maskclip_bench.report."""
    from maskclip_bench.comparison import write_comparison
    from maskclip_bench.report import write_report

    files = write_report(results_dir, out)
    import shlex
    import sys

    command = "maskclip-bench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "maskclip-bench report"
    comparison = write_comparison([results_dir, ablations_dir], out, command)
    typer.echo(f"{len(files.table)} checkpoint(s) from {files.num_records} record(s): "
               f"{files.markdown}, {files.csv}, {files.long_csv}, {comparison}")


def register(app: typer.Typer) -> None:
    """Add `report`."""
    app.command("report")(report_command)
