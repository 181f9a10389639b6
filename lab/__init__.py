"""The lab: network namespaces, hypervisors with their own Open vSwitch
daemons, VMs, captures and scenarios. Used by the tests, the demo, the
benchmark and the Vagrant provisioning; not installed with the package."""
