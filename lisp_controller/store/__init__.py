"""Durable storage of what the API was told (docs/architecture.rst)."""
