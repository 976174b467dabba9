"""The lab: a sandbox of network namespaces that plays a compute host and its VMs."""
