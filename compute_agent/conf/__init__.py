"""The agent's configuration: every option declared once, in this package.

``CONF`` is the agent's own ``ConfigOpts`` (not oslo's global one, so that
oslo.messaging can share a process with it in tests); each submodule declares
one group; oslo.log's options are registered too (``compute_agent.log``).
``check(conf)`` reads every option so that a bad value stops the agent at
start with the option's name instead of failing later mid-request.

A nova.conf is read as it is: nova's and oslo.messaging's names are
deprecated names of ours (rabbit.py, rpc.py, images.py, vnc.py), and
``unknown.warn_unknown`` names the options the agent ignores.
"""

from oslo_config import cfg

from compute_agent.conf import default
from compute_agent.conf import images
from compute_agent.conf import libvirt
from compute_agent.conf import metrics
from compute_agent.conf import rabbit
from compute_agent.conf import rpc
from compute_agent.conf import vif
from compute_agent.conf import vnc
from compute_agent import exception
from compute_agent import log

CONF = cfg.ConfigOpts()


def register_all(conf):
    """Register every option (the agent's and oslo.log's) on ``conf``."""
    for module in (default, libvirt, vnc, images, rpc, rabbit, metrics, vif,
                   log):
        module.register(conf)
    return conf


def check(conf):
    """Read every registered option; raise ConfigError naming a bad one."""
    from compute_agent.conf import opts
    for group, group_opts in opts.list_opts():
        name = getattr(group, 'name', group)
        ns = conf if name == 'DEFAULT' else conf[name]
        for opt in group_opts:
            try:
                ns[opt.dest]
            except (ValueError, cfg.ConfigFileValueError) as e:
                raise exception.ConfigError(
                    group=name, option=opt.name, reason=str(e)) from None
    if conf.libvirt.cpu_mode == 'custom' and not conf.libvirt.cpu_model:
        raise exception.ConfigError(
            group='libvirt', option='cpu_model',
            reason='required when cpu_mode is custom')
    if conf.libvirt.cpu_model and conf.libvirt.cpu_mode != 'custom':
        raise exception.ConfigError(
            group='libvirt', option='cpu_model',
            reason='only meaningful when cpu_mode is custom')
    if conf.libvirt.virt_type in ('kvm', 'qemu'):
        from compute_agent.virt import console
        console.backups_allowed(conf)       # virtlogd must bound the log
    from compute_agent.rpc import topology
    problem = topology.host_problem(conf)
    if problem:
        raise exception.ConfigError(group='DEFAULT', option='host',
                                    reason=problem)


register_all(CONF)
