"""Command tables piped into a log are printed whole, not wrapped at rich's 80-column default."""
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
