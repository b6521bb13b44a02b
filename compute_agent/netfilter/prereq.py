"""Host prerequisites for VIF filters: checked, set when allowed, never
silently missing.

* bridge/ethernet VIFs need libvirt's nwfilter driver and ``ebtables``
  (clean-traffic is ebtables rules);
* security rules on a Linux bridge are iptables rules and only see bridged
  packets with ``net.bridge.bridge-nf-call-iptables`` (and -ip6tables) = 1.
  When ``[DEFAULT] set_bridge_nf_call`` is true the agent sets it; otherwise
  such a VIF is refused.

Each check returns None when fine, else the reason (a sentence).
"""

import os
import shutil

import libvirt

SYSCTL_DIR = '/proc/sys/net/bridge'
BRIDGE_NF = ('bridge-nf-call-iptables', 'bridge-nf-call-ip6tables')


def nwfilter_driver(conn):
    try:
        conn.nwfilterLookupByName('clean-traffic')
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER:
            return ('libvirt has no clean-traffic nwfilter (its nwfilter '
                    'definitions are missing)')
        return ('libvirt\'s nwfilter driver is not available (%s)'
                % e.get_error_message())
    return None


def ebtables():
    if shutil.which('ebtables') is None:
        return 'ebtables is not installed (package ebtables or iptables)'
    return None


def bridge_nf_call(may_set, sysctl_dir=SYSCTL_DIR):
    """net.bridge.bridge-nf-call-ip(6)tables = 1, set when ``may_set``."""
    missing = []
    for name in BRIDGE_NF:
        path = os.path.join(sysctl_dir, name)
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            return ('%s is missing (kernel module br_netfilter not loaded)'
                    % path.replace('/proc/sys/', '').replace('/', '.'))
        if value == '1':
            continue
        if may_set:
            try:
                with open(path, 'w') as f:
                    f.write('1\n')
                continue
            except OSError as e:
                return 'cannot set net.bridge.%s=1: %s' % (name, e)
        missing.append('net.bridge.%s' % name)
    if missing:
        return ('%s is 0, so security rules would not act on bridged '
                'traffic (set it to 1, or [DEFAULT] set_bridge_nf_call = '
                'true)' % ' and '.join(missing))
    return None
