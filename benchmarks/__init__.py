"""Benchmarks of cdn-async, one script a module; ``benchmarks/RESULTS.md`` records their figures.

Run each from the repository root as a module, with the ``bench`` extra installed
(``pip install -e '.[bench]'``)::

    python -m benchmarks.bench_budgets
    python -m benchmarks.bench_e2e
    python -m benchmarks.bench_purge
    python -m benchmarks.bench_plan
    python -m benchmarks.bench_overhead
    python -m benchmarks.bench_cotenant
    python -m benchmarks.bench_redis            # needs redis-server on PATH
    python -m benchmarks.bench_redis_failures   # needs redis-server on PATH
    python -m benchmarks.charts                 # rewrites benchmarks/*.svg

Every script takes ``--smoke``: tiny sizes, a few seconds, figures meaningless; it only proves
the script still runs (``tests/test_benchmarks.py`` runs each one so). They import the public
API wherever it has a name, and nothing from ``tests/``.
"""
