"""Benchmarks: one script per measured claim, each writing bench/results/NAME.json.

Run them as modules from the repository root, e.g. `.venv/bin/python -m bench.vocab`: the repository root is then
the only folder of ours on `sys.path`, so no script of ours can shadow an installed package (`python -m bench.x`
would put `bench/` itself first on the path). tests/test_shadowing.py keeps it that way.
"""
