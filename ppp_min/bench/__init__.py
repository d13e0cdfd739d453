"""Benchmarks (not tests): each prints a table, then a JSON object as its last line. Run on purpose."""
