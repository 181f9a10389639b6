"""OpenFlow 1.3 on the wire: the flow-mod codec, the switch session
(bundles, barriers, stats), read-back verification and TLS
(docs/architecture.rst)."""
