.PHONY: serve test lint typecheck check bench fmt clean

serve:            ## start the broker on its embedded default
	scripts/serve

test:             ## the whole test suite (installs missing peers)
	scripts/test

lint:
	scripts/bootstrap && .venv/bin/ruff check broker tests bench

fmt:
	scripts/bootstrap && .venv/bin/ruff format broker tests bench

typecheck:
	scripts/bootstrap && .venv/bin/mypy

check: lint typecheck   ## ruff + mypy

bench:            ## benchmarks (not part of the tests); figures go to docs/PERFORMANCE.md
	scripts/bench

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
