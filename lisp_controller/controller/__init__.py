"""The controller: desired state, reconciliation, bridge sessions and the
thin os-ken application that connects them to switches
(docs/architecture.rst)."""
