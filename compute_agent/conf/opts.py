"""``list_opts()`` for oslo-config-generator (entry point oslo.config.opts).

oslo.log's own options come from its ``oslo.log`` namespace (see
etc/compute-agent/compute-agent-config-generator.conf).
"""

from compute_agent.conf import default
from compute_agent.conf import images
from compute_agent.conf import libvirt
from compute_agent.conf import metrics
from compute_agent.conf import rabbit
from compute_agent.conf import rpc
from compute_agent.conf import vif
from compute_agent.conf import vnc


def list_opts():
    return [
        ('DEFAULT', default.opts + rpc.default_opts + rabbit.opts),
        (libvirt.group, libvirt.opts),
        (vnc.group, vnc.opts),
        (images.group, images.opts),
        (rpc.group, rpc.opts),
        (metrics.group, metrics.opts),
    ] + [(group, opts) for group, opts in vif.GROUPS]
