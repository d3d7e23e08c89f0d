# Two commands on a fresh machine: `make demo` and `make test`. Both install what is missing first
# (a virtual environment in .venv with the project in editable mode and its dev extra).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Test files run in this many pytest-xdist workers, each with its share of the cores (tests/conftest.py).
TEST_WORKERS ?= 2
# The stamp changes whenever pyproject.toml does, so dependency edits reinstall.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test bench mutate clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: install
	$(BIN)/maskclip-bench demo

# The project is installed in editable mode, so pip compiles none of its modules; where PYTHONDONTWRITEBYTECODE is
# set (as on the CI machine) every test process would compile them again. Compile them once first (about 3 s).
test: install
	$(BIN)/python -m compileall -q maskclip_core maskclip_bench > /dev/null
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: install
	$(BIN)/python -m pytest -q benchmarks --benchmark-only --benchmark-columns=mean,stddev,rounds

# Mutation testing (not part of `make test`; CPU-heavy): mutmut over the modules and fast tests named in
# pyproject.toml's [tool.mutmut], then the score per module. MUTANTS narrows the run to mutant-name globs,
# e.g. MUTANTS='maskclip_bench.experiments.regression.*'; MUTATE_JOBS sets the parallel workers. See results/mutation.md.
MUTANTS     ?=
MUTATE_JOBS ?= 1
mutate: install
	@$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/python -m pip install -q --disable-pip-version-check 'mutmut>=3.8,<4'
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(BIN)/python tests/tools/mutation_score.py mutants

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks mutants
