"""One loader for every plugin: VIF drivers, volume drivers, image sources.

Plugins are entry points (stevedore) in the groups of :data:`KINDS`; a
request names one by a field (a VIF's ``type``, a volume's
``connection_info.driver_volume_type``, an image URL's scheme).
``load(namespace, name, field, conf)`` returns the plugin object, made with
``conf`` once and then cached per (namespace, name) for that ``conf`` (the
cache lives in the conf object, so it goes when the conf goes).

Errors:

* a name that is not installed: ``InvalidRequest`` naming ``field``, with the
  installed names as the reason (the name sent is not repeated);
* an installed plugin that cannot be imported or built:
  :class:`PluginLoadFailed`, naming the plugin, its group, the field and the
  cause. It is not cached: the next request tries again.
"""

import logging
import threading

from stevedore import driver as stevedore_driver
from stevedore import exception as stevedore_exc
from stevedore import extension

from compute_agent import exception

LOG = logging.getLogger(__name__)

VIF_DRIVERS = 'compute_agent.vif_drivers'
VOLUME_DRIVERS = 'compute_agent.volume_drivers'
IMAGE_SOURCES = 'compute_agent.image_sources'

#: namespace -> what one of its names is called in an error.
KINDS = {
    VIF_DRIVERS: 'VIF type',
    VOLUME_DRIVERS: 'volume driver type',
    IMAGE_SOURCES: 'image source scheme',
}


class PluginLoadFailed(exception.AgentError):
    """An installed plugin could not be imported or instantiated."""

    msg_fmt = ('Plugin %(name)s (%(namespace)s, for %(field)s) failed to load: '
               '%(cause)s')


_lock = threading.RLock()
_classes = {}      # (namespace, name) -> plugin class (or factory)
_objects = {}      # (namespace, name) -> object made without a conf
_CONF_CACHE = '_compute_agent_plugins'


def _cache_of(conf):
    """(namespace, name) -> object, for objects made with ``conf``.

    Kept in the conf object itself: plugins hold their conf, so a cache
    outside it would keep every conf (and its plugins) alive for good.
    """
    if conf is None:
        return _objects
    return vars(conf).setdefault(_CONF_CACHE, {})


def names(namespace):
    """The sorted names installed in ``namespace`` (nothing is imported)."""
    manager = extension.ExtensionManager.make_test_instance([], namespace=namespace)
    return sorted(set(manager.entry_points_names()))


def _kind(namespace):
    return KINDS.get(namespace, 'plugin name')


def _unknown(namespace, field):
    installed = ', '.join(names(namespace)) or 'none'
    return exception.InvalidRequest(
        field, 'unknown %s (installed: %s)' % (_kind(namespace), installed))


def check_name(namespace, name, field):
    """InvalidRequest on ``field`` unless ``name`` is installed in ``namespace``.

    Reads only the entry point list: usable at validation time, before
    anything is loaded.
    """
    if not isinstance(name, str) or not name:
        installed = ', '.join(names(namespace)) or 'none'
        raise exception.InvalidRequest(
            field, 'must name an installed %s (installed: %s)' % (
                _kind(namespace), installed))
    if name not in names(namespace):
        raise _unknown(namespace, field)


def _reraise(_manager, _entry_point, exc):
    # Without this stevedore logs an import error and reports "no match",
    # hiding the cause.
    raise exc


def _plugin_class(namespace, name, field):
    key = (namespace, name)
    if key not in _classes:
        try:
            manager = stevedore_driver.DriverManager(
                namespace, name, invoke_on_load=False,
                on_load_failure_callback=_reraise)
        except stevedore_exc.NoMatches:
            raise _unknown(namespace, field) from None
        except Exception as e:
            LOG.exception('Plugin %s of %s failed to load', name, namespace)
            raise PluginLoadFailed(name=name, namespace=namespace, field=field,
                                   cause='%s: %s' % (type(e).__name__, e)) from e
        _classes[key] = manager.driver
    return _classes[key]


def load(namespace, name, field, conf=None):
    """The plugin object ``name`` of ``namespace``, built as ``cls(conf)``.

    Cached per (namespace, name) and ``conf`` (``None``: built with no
    arguments). Raises ``InvalidRequest`` on ``field`` for a name that is
    not installed, :class:`PluginLoadFailed` for one that does not load.
    """
    if not isinstance(name, str) or not name:
        check_name(namespace, name, field)          # raises
    key = (namespace, name)
    obj = _cache_of(conf).get(key)      # a dict read needs no lock
    if obj is not None:
        return obj
    with _lock:
        cache = _cache_of(conf)
        if key in cache:
            return cache[key]
        check_name(namespace, name, field)
        cls = _plugin_class(namespace, name, field)
        try:
            obj = cls() if conf is None else cls(conf)
        except exception.AgentError:
            raise
        except Exception as e:
            LOG.exception('Plugin %s of %s failed to initialize', name, namespace)
            raise PluginLoadFailed(name=name, namespace=namespace, field=field,
                                   cause='%s: %s' % (type(e).__name__, e)) from e
        cache[key] = obj
        return obj


def forget():
    """Drop the class and entry point caches, and the objects made without a
    conf (tests that install or remove plugins)."""
    with _lock:
        _classes.clear()
        _objects.clear()
        extension.ExtensionManager.ENTRY_POINT_CACHE.clear()
