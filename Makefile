# The two commands of the README: `make run` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint unit system soak crash fuzz bench bench-full bench-feed bench-metrics bench-scaleout bench-commitment clean

install:
	scripts/bootstrap.sh

run: install
	$(BIN)/storscp run

test:
	scripts/bootstrap.sh --test
	$(BIN)/ruff check storscp tests bench
	$(BIN)/mypy
	$(BIN)/mypy tests/support
	$(BIN)/python -m pytest -q -m "not slow" tests

soak:
	scripts/bootstrap.sh --test
	$(BIN)/python -m pytest -q -m slow tests

# The power-loss tests on LazyFS, with many crash points (`make test` runs a few):
# STORSCP_POWER_CUTS (default 40) per variant; STORSCP_POWER_SEED replays a run.
crash:
	scripts/bootstrap.sh --test
	$(BIN)/python -m pytest -q tests/system/test_power_loss.py

# The benchmark of issue 6 (bench/README.md); not part of `make test`.
# A quick run reports to bench/out/RESULTS.md; only a full run updates the
# tracked reference, bench/RESULTS.md.
bench:
	scripts/bootstrap.sh --test
	$(BIN)/python -m bench.run --quick

bench-full:
	scripts/bootstrap.sh --test
	$(BIN)/python -m bench.run --full --results bench/RESULTS.md

# The feed's cost and speed (issue 11): receive rate with and without a feed
# consumer (and, with BASELINE=<checkout with .venv>, that build's), feed latency.
# Reports to bench/out/feed.md.
bench-feed:
	scripts/bootstrap.sh --test
	$(BIN)/python -m bench.feed $(if $(BASELINE),--baseline $(BASELINE))

# What metrics cost the receive path (issue 13): off / on / scraped every second.
bench-metrics:
	scripts/bootstrap.sh --test
	$(BIN)/python -m bench.metrics_cost

# Issue 14: 4 senders straight to a node, through HAProxy to 1 node and to 2 nodes.
bench-scaleout:
	scripts/bootstrap.sh --test
	$(BIN)/python -m bench.scaleout

# Storage Commitment (issue 12): report latency for 1,000 references, and the
# receive rate while commitment requests are served; see README "Storage Commitment".
bench-commitment:
	scripts/bootstrap.sh --test
	$(BIN)/python -m bench.commitment

# The receiver fuzz test for longer than the 30 s that `make test` gives it:
# STORSCP_FUZZ_SECONDS (default 1200) of hostile input, then the inputs survived.
fuzz:
	scripts/bootstrap.sh --test
	STORSCP_FUZZ_SECONDS=$${STORSCP_FUZZ_SECONDS:-1200} $(BIN)/python -m pytest -q tests/system/test_fuzz.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
