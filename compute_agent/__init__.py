"""compute-agent: a small nova-compute-style libvirt host agent."""
