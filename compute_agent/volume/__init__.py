"""Volume drivers: the host side of a volume and the guest disk it becomes.

One module per ``driver_volume_type``; each is registered in the entry point
group ``compute_agent.volume_drivers`` (``compute_agent.virt.volume.load``
picks one). ``base`` holds what they share, ``secrets`` the libvirt secrets
that carry CHAP/ceph passwords so they never appear in a domain's XML.
"""
