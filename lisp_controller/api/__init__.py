"""The REST API, its OpenAPI document, the metrics and the status page
(docs/architecture.rst)."""
