"""Registering a group's options on one ConfigOpts without sharing state.

oslo.config keeps per-option state (overrides, defaults) on the registered
OptGroup, and ``register_group`` copies the group only shallowly: reusing a
module-level OptGroup would share overrides between ConfigOpts objects.
Registering a fresh group by name keeps each ConfigOpts independent.
"""

from oslo_config import cfg


def register_group_opts(conf, group, opts):
    conf.register_group(cfg.OptGroup(group.name, title=group.title,
                                     help=group.help))
    conf.register_opts(opts, group=group.name)
