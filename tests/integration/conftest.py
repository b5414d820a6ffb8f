"""Shared live-site fixtures live in tests/conftest.py."""
