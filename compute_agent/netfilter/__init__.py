"""Tenant isolation for VIFs: anti-spoofing and security rules.

``spec`` reads and checks a VIF's ``filter`` (the protocol docs 1.1 section 3);
``nwfilter`` turns it into a libvirt nwfilter (bridge and ethernet VIFs);
``openflow`` into OpenFlow rules on the OVS integration bridge; ``prereq``
checks the host can enforce them; ``firewall`` is what the virt driver calls.
"""
