"""Micro-benchmarks of the methods' pieces, all reported in one table: ``python -m benchmarks`` (``make bench``).

Each ``bench_*`` module exposes ``rows(setup) -> list[Row]`` (see :mod:`benchmarks.common`);
:mod:`benchmarks.run_all` runs them and prints the table.
"""
