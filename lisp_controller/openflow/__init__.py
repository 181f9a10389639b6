"""OpenFlow 1.3 on the wire: the flow-mod codec, the switch session
(bundles, barriers, stats), read-back verification, TLS, and the accept
loop that decides which connection may be which datapath
(docs/architecture.rst)."""
