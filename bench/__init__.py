"""Benchmarks: scripts, not tests (see the README's Performance section)."""
