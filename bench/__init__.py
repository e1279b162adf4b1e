"""Benchmarks (run as ``python -m bench.<name>``; ``make bench`` runs them all).

They build on the test helpers (tests/helpers/), never on a test module.
"""
