# The two commands of the README: `make run` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint unit system soak bench bench-full clean

install:
	scripts/bootstrap.sh

run: install
	$(BIN)/storscp run

test:
	scripts/bootstrap.sh --test
	$(BIN)/ruff check storscp tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow" tests

soak:
	scripts/bootstrap.sh --test
	$(BIN)/python -m pytest -q -m slow tests

# The benchmark of issue 6 (bench/README.md); not part of `make test`.
bench:
	scripts/bootstrap.sh --test
	$(BIN)/python -m bench.run --quick

bench-full:
	scripts/bootstrap.sh --test
	$(BIN)/python -m bench.run --full

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
