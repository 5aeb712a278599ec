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
	$(BIN)/ruff check storscp tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow" tests

soak:
	scripts/bootstrap.sh --test
	$(BIN)/python -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
