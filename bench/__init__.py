"""Benchmarks of the borg deploys against the raw tools, on a namespace test fleet of their own.

    .venv/bin/python -m bench [--hosts N] [--quick]

See bench/README.md for what is measured, the targets and the last results.
"""
