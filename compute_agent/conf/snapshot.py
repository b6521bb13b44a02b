"""Read-once views of a ConfigOpts, for code that reads options in a loop.

An oslo.config lookup (``conf.libvirt.disk_cachemode``) costs about 1.6 us:
two ``__getattr__`` calls and a cache lookup. The guest builder reads ~40
per guest. ``snapshot(conf)`` returns a view whose attributes are the same
values, each read from ``conf`` once and then a plain attribute.

The view is shared by every caller until the configuration changes. It is
kept inside oslo.config's own value cache, which oslo.config empties on every
change (set_override, clear_override, set_default, register_opt, reload,
mutate, a new parse): a view found there answers exactly what ``conf`` would,
by oslo.config's own guarantee for its cache. Without that cache (another
oslo.config, or an object that is not a ConfigOpts) each call gets a fresh
view.
"""

from oslo_config import cfg

_GROUP = cfg.ConfigOpts.GroupAttr
# Never an oslo.config key: those are (group name or None, option name).
_KEY = ('compute_agent.conf.snapshot', object())


class Snapshot:
    """Attributes of ``source`` (a ConfigOpts or one of its groups), each
    read once; a group is a Snapshot of its own."""

    def __init__(self, source):
        self._source = source

    def __getattr__(self, name):
        # Only called for a name not read yet: reading stores it.
        if name.startswith('__'):
            raise AttributeError(name)
        value = getattr(self._source, name)
        if isinstance(value, _GROUP):
            value = Snapshot(value)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name, value):
        if name != '_source':
            raise AttributeError('a configuration snapshot is read-only')
        object.__setattr__(self, name, value)


def snapshot(conf):
    """The read-once view of ``conf`` (shared until ``conf`` changes)."""
    cache = getattr(conf, '_ConfigOpts__cache', None)
    if not isinstance(cache, dict):
        return Snapshot(conf)
    view = cache.get(_KEY)
    if view is None:
        view = cache[_KEY] = Snapshot(conf)
    return view


def derived(conf, make):
    """``make(snapshot(conf))``, made once and shared until ``conf``
    changes (kept in the same cache as the snapshot, so dropped with it)."""
    cache = getattr(conf, '_ConfigOpts__cache', None)
    if not isinstance(cache, dict):
        return make(Snapshot(conf))
    key = (_KEY, make)
    value = cache.get(key)
    if value is None:
        value = cache[key] = make(snapshot(conf))
    return value
