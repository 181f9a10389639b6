"""The command-line client of the REST API (docs/architecture.rst)."""
