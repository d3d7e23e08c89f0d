"""Mutation score per module (and per function with --functions) from a mutmut 3 run's result files.

mutmut writes one ``<module>.py.meta`` JSON per mutated file under ``mutants/`` with the exit code of the test
run of each mutant. Score = killed / (killed + survived), over the mutants that were run: "no tests" (no fast
test reaches the function), "not checked" (outside the run's MUTANTS globs) and "skipped" are counted apart,
timeouts count as killed (the mutant made the tests hang). Usage:

    python tests/tools/mutation_score.py [mutants] [--functions] [--survivors]
"""
from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code  # mutmut's own reading of its exit codes

KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def _module_and_function(mutant: str) -> tuple[str, str]:
    """``pkg.mod.x_func__mutmut_3`` -> (``pkg.mod``, ``func``); methods are ``xǁClassǁmethod__mutmut_3``."""
    head, _, tail = mutant.rpartition(".")
    name = tail.rsplit("__mutmut_", 1)[0]
    return head, name.removeprefix("x_").removeprefix("x").replace("ǁ", ".").strip(".")


def load(root: Path) -> dict[str, str]:
    """{mutant name: status} over every result file under `root`."""
    statuses = {}
    for meta in sorted(root.rglob("*.py.meta")):
        for mutant, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            statuses[mutant] = status_by_exit_code[code]
    return statuses


def table(statuses: dict[str, str], by_function: bool) -> list[str]:
    """Markdown rows: unit | mutants run | killed | survived | score | no tests | not run."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for mutant, status in statuses.items():
        module, function = _module_and_function(mutant)
        counts[f"{module}.{function}" if by_function else module][status] += 1
    rows = ["| unit | run | killed | survived | score | no fast test | not run |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for unit, c in sorted(counts.items()):
        killed = sum(c[s] for s in KILLED)
        run = killed + c["survived"]
        if run == 0 and c["no tests"] == 0:
            continue  # entirely outside this run
        score = f"{100 * killed / run:.1f} %" if run else "-"
        rows.append(f"| {unit} | {run} | {killed} | {c['survived']} | {score} | {c['no tests']} | "
                    f"{c['not checked'] + c['skipped']} |")
    return rows


def main(argv: list[str]) -> None:
    """Print the score table (and the surviving mutants' names with --survivors)."""
    root = Path(next((a for a in argv if not a.startswith("--")), "mutants"))
    statuses = load(root)
    print("\n".join(table(statuses, "--functions" in argv)))
    if "--survivors" in argv:
        print("\nsurvivors:")
        for mutant, status in sorted(statuses.items()):
            if status == "survived":
                print(f"  {mutant}")


if __name__ == "__main__":
    main(sys.argv[1:])
