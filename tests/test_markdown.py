"""The one table writer and the ``mean ± std`` cell of every committed table, against tables written by hand."""
from __future__ import annotations

import math

from maskclip_bench.results.markdown import mean_std, signed, table_lines


def test_table_lines_by_hand():
    assert table_lines(["a", "b"], [["1", "x"], [2, None]]) == [
        "| a | b |",
        "| --- | --- |",
        "| 1 | x |",
        "| 2 | None |",
    ]
    assert table_lines(["only"], []) == ["| only |", "| --- |"]


def test_mean_std_cells():
    assert mean_std(0.1234, 0.0456) == "12.3 ± 4.6"
    assert mean_std(0.5, float("nan")) == mean_std(0.5, None) == "50.0"  # one seed: no spread to show
    assert mean_std(float("nan"), 0.1) == "" and mean_std(None, None, missing="-") == "-"
    assert mean_std(12.34, 0.5, scale=1.0) == "12.3 ± 0.5"
    assert signed(0.0123) == "+1.2" and signed(-0.0123) == "-1.2" and signed(math.nan) == "" and signed(None) == ""
