"""Benchmarks, not tests (see ``bench/README.md``): run from the repository root as
``python -m bench.bench_tokens`` and ``python -m bench.bench_proxy``; they start their
servers with ``tests.harness``."""
