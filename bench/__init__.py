"""The benchmarks, run from the repository root as modules: ``python -m bench.run``,
``-m bench.service_ops``, ``-m bench.compare OLD NEW`` (bench/README.md)."""
