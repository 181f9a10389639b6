"""The OpenFlow pipeline as values: tunnel profiles, flows, and the pure
compiler from the model to the flows each bridge should hold
(docs/architecture.rst)."""
