"""Reusable helpers for tests that start real services (broker, ports)."""
