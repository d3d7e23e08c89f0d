"""Command tables piped into a log are printed whole, not wrapped at rich's 80-column default."""
import os

from rich.table import Table

from maskclip_bench.commands.console import LOG_WIDTH, command_console


def test_piped_tables_are_not_wrapped_at_80_columns(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = command_console()  # pytest's captured stdout is not a terminal, as a CI log is not
    assert console.width == LOG_WIDTH
    table = Table()
    table.add_column("dataset / metric")
    table.add_column("value")
    name = "shapes/retrieval image_retrieval_recall@10 " + "x" * 60  # 103 characters: wraps at 80 columns
    table.add_row(name, "12.3")
    console.print(table)
    assert any(name in line and "12.3" in line for line in capsys.readouterr().out.splitlines())


def test_an_explicit_columns_setting_wins(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert command_console().width == 100
    assert command_console(stderr=True).width == 100


def _bars_disabled(*argvs: list[str]) -> list[bool]:
    """Whether CLIP_benchmark's tqdm bars are off after the entry point saw each argv (a fresh process each, run
    side by side: each mostly waits on its imports)."""
    import subprocess
    import sys

    code = ("import sys; from maskclip_bench.cli import quiet_progress; quiet_progress(sys.argv[1:]); "
            "import maskclip_bench.evaluation.tasks; from clip_benchmark.metrics import zeroshot_classification as z; "
            "print(z.tqdm([1]).disable)")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    procs = [subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for argv in argvs]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    return [out.strip() == "True" for out, _ in outs]


def test_quiet_commands_turn_clip_benchmarks_bars_off_at_the_entry_point():
    from maskclip_bench.cli import QUIET_COMMANDS

    assert QUIET_COMMANDS == ("ablate", "check", "demo")  # each also quiet, by the same branch as --quiet
    assert _bars_disabled(["zeroshot", "--ckpt", "x", "--quiet"], ["zeroshot", "--ckpt", "x"]) == [True, False]
