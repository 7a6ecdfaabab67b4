# Conveniences over scripts/: the scripts are what the README and CI run.
.PHONY: install test lint run bench demo
install:
	bash scripts/setup.sh
test:
	bash scripts/test.sh
lint: install
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
run:
	bash scripts/run.sh
demo:
	bash scripts/demo.sh
bench:
	WITH_BENCH=1 bash scripts/setup.sh
	bash scripts/install-cube.sh >/dev/null
	.venv/bin/python -m bench.bench_tokens
	.venv/bin/python -m bench.bench_proxy
