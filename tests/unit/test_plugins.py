"""compute_agent.plugins: the one loader of VIF drivers, volume drivers and
image sources (stevedore entry points, cached, errors naming the field).

Test plugins are real entry points: a ``.dist-info`` and a module put on
``sys.path``, which is what installing a package does for discovery.
"""

import gc
import sys
import textwrap
import weakref

import pytest
from oslo_config import cfg
from stevedore import extension

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent import plugins
from compute_agent.images import sources
from compute_agent.vif import base as vif_base
from compute_agent.vif import loader
from compute_agent.virt import volume

NS = 'compute_agent.test_plugins'

PLUGIN_MODULE = '''
from compute_agent import exception

class Good:
    made = 0

    def __init__(self, conf=None):
        type(self).made += 1
        self.conf = conf

class FailsInit:
    def __init__(self, conf=None):
        raise RuntimeError('cannot reach the frobnicator')

class ConfigProblem:
    def __init__(self, conf=None):
        raise exception.ConfigError(group='g', option='o', reason='bad')
'''

ENTRY_POINTS = {
    NS: ['good = ca_test_plugin:Good',
         'fails_init = ca_test_plugin:FailsInit',
         'config_problem = ca_test_plugin:ConfigProblem',
         'missing_module = ca_no_such_module:Thing',
         'missing_class = ca_test_plugin:NoSuchClass',
         'broken_import = ca_test_broken:Thing'],
}


def make_conf():
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    return conf


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The test plugins, 'installed' for this test only."""
    site = tmp_path / 'site'
    for dist, groups in (('ca_test_plugin-1.0', ENTRY_POINTS),):
        info = site / (dist + '.dist-info')
        info.mkdir(parents=True)
        name, version = dist.split('-')
        (info / 'METADATA').write_text(
            'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' % (name, version))
        (info / 'entry_points.txt').write_text(''.join(
            '[%s]\n%s\n' % (group, '\n'.join(lines)) for group, lines in groups.items()))
    (site / 'ca_test_plugin.py').write_text(textwrap.dedent(PLUGIN_MODULE))
    (site / 'ca_test_broken.py').write_text('import ca_no_such_dependency\n')
    monkeypatch.syspath_prepend(str(site))
    # stevedore reads the entry points once per process (a real plugin is
    # installed before the agent starts): make it look again, and again after.
    monkeypatch.setattr(extension.ExtensionManager, 'ENTRY_POINT_CACHE', {})
    plugins.forget()
    yield
    plugins.forget()
    for module in ('ca_test_plugin', 'ca_test_broken'):
        sys.modules.pop(module, None)


def test_names_lists_without_importing(installed):
    assert plugins.names(NS) == sorted(
        ['good', 'fails_init', 'config_problem', 'missing_module', 'missing_class',
         'broken_import'])
    assert 'ca_test_plugin' not in sys.modules


def test_load_makes_the_plugin_with_conf_once(installed):
    conf = make_conf()
    first = plugins.load(NS, 'good', 'x.type', conf)
    assert type(first).__name__ == 'Good' and first.conf is conf
    assert plugins.load(NS, 'good', 'x.type', conf) is first
    other_conf = make_conf()
    other = plugins.load(NS, 'good', 'x.type', other_conf)
    assert other is not first and other.conf is other_conf
    assert type(first).made == 2


def test_no_conf_means_no_arguments(installed):
    obj = plugins.load(NS, 'good', 'x.type')
    assert obj.conf is None
    assert plugins.load(NS, 'good', 'x.type') is obj


def test_cached_object_goes_with_its_conf(installed):
    conf = make_conf()
    obj = weakref.ref(plugins.load(NS, 'good', 'x.type', conf))
    assert obj() is not None
    del conf
    make_conf()     # oslo.log keeps the last conf that registered its options
    gc.collect()
    assert obj() is None


# (name, field, the reason) for names that are not installed
UNKNOWN = [
    ('nosuch', 'network_info[2].type', 'unknown plugin name (installed: %s)'),
    ('Good', 'a.b', 'unknown plugin name (installed: %s)'),
    ('good\n', 'a.b', 'unknown plugin name (installed: %s)'),
    ('', 'a.b', 'must name an installed plugin name (installed: %s)'),
    (None, 'a.b', 'must name an installed plugin name (installed: %s)'),
    (5, 'a.b', 'must name an installed plugin name (installed: %s)'),
    (['good'], 'a.b', 'must name an installed plugin name (installed: %s)'),
]


@pytest.mark.parametrize('name, field, reason', UNKNOWN, ids=[repr(u[0]) for u in UNKNOWN])
def test_unknown_name_is_invalid_request_naming_the_field(installed, name, field, reason):
    for call in (lambda: plugins.load(NS, name, field, make_conf()),
                 lambda: plugins.check_name(NS, name, field)):
        with pytest.raises(exception.InvalidRequest) as err:
            call()
        assert err.value.field == field
        assert err.value.reason == reason % ', '.join(plugins.names(NS))
        if isinstance(name, str) and name:
            assert repr(name) not in err.value.message


# (name, exception class, words the message must hold)
BROKEN = [
    ('fails_init', plugins.PluginLoadFailed,
     ['fails_init', NS, 'x.type', 'RuntimeError: cannot reach the frobnicator']),
    ('missing_module', plugins.PluginLoadFailed,
     ['missing_module', NS, 'x.type', 'ModuleNotFoundError', 'ca_no_such_module']),
    ('missing_class', plugins.PluginLoadFailed,
     ['missing_class', NS, 'x.type', 'AttributeError', 'NoSuchClass']),
    ('broken_import', plugins.PluginLoadFailed,
     ['broken_import', NS, 'x.type', 'ModuleNotFoundError', 'ca_no_such_dependency']),
    # the plugin's own verdict about its configuration goes through as it is
    ('config_problem', exception.ConfigError, ['[g] o: bad']),
]


@pytest.mark.parametrize('name, cls, words', BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_plugin_names_plugin_and_cause(installed, name, cls, words):
    for _ in range(2):              # failures are not cached: both attempts fail
        with pytest.raises(cls) as err:
            plugins.load(NS, name, 'x.type', make_conf())
        assert type(err.value) is cls
        for word in words:
            assert word in err.value.message, err.value.message
    assert not [key for key in plugins._objects if key[1] == name]
    # and nothing was cached for a conf either
    conf = make_conf()
    with pytest.raises(cls):
        plugins.load(NS, name, 'x.type', conf)
    assert vars(conf).get(plugins._CONF_CACHE, {}) == {}


def test_plugin_load_failed_is_an_agent_error(installed):
    with pytest.raises(exception.AgentError) as err:
        plugins.load(NS, 'fails_init', 'x.type', make_conf())
    assert err.value.to_dict()['class'] == 'PluginLoadFailed'


# -- the three kinds all go through it ----------------------------------------------

# (namespace, installed names that must be there, how the kind is called)
KINDS = [
    (plugins.VIF_DRIVERS, {'bridge', 'ovs', 'ethernet'}, 'VIF type'),
    (plugins.VOLUME_DRIVERS, {'local', 'iscsi', 'rbd', 'nfs'}, 'volume driver type'),
    (plugins.IMAGE_SOURCES, {'file', 'http', 'https'}, 'image source scheme'),
]


@pytest.mark.parametrize('namespace, builtin, kind', KINDS, ids=[k[2] for k in KINDS])
def test_builtin_kinds(namespace, builtin, kind):
    assert builtin <= set(plugins.names(namespace))
    conf = make_conf()
    for name in builtin:
        assert plugins.load(namespace, name, 'f', conf) is plugins.load(namespace, name, 'f',
                                                                         conf)
    with pytest.raises(exception.InvalidRequest) as err:
        plugins.load(namespace, 'no_such_plugin', 'some.field', conf)
    assert err.value.field == 'some.field'
    assert err.value.reason.startswith('unknown %s (installed: ' % kind)


def test_wrappers_use_the_loader():
    conf = make_conf()
    drivers = loader.VifDrivers(conf)
    assert drivers.get('bridge') is plugins.load(plugins.VIF_DRIVERS, 'bridge', 'f', conf)
    assert isinstance(drivers.get('bridge'), vif_base.VifDriver)
    assert volume.load(conf, 'local') is plugins.load(plugins.VOLUME_DRIVERS, 'local', 'f',
                                                      conf)
    assert sources.get_source(conf, 'HTTP') is plugins.load(plugins.IMAGE_SOURCES, 'http',
                                                            'f', conf)


# (call, field named in the error)
WRAPPER_ERRORS = [
    (lambda conf: loader.VifDrivers(conf).get('nosuch', 'network_info[3].type'),
     'network_info[3].type'),
    (lambda conf: loader.VifDrivers(conf).for_network_info(
        [{'type': 'bridge'}, {'type': 'nosuch'}]), 'network_info[1].type'),
    (lambda conf: volume.load(conf, 'nosuch'),
     'block_device_info.block_device_mapping.connection_info.driver_volume_type'),
    (lambda conf: volume.load(conf, 'nosuch', 'block_device_info.block_device_mapping[4]'
                                              '.connection_info.driver_volume_type'),
     'block_device_info.block_device_mapping[4].connection_info.driver_volume_type'),
    (lambda conf: sources.get_source(conf, 'gopher'), 'image_meta.location'),
    (lambda conf: sources.get_source(conf, 'gopher', '[images] image_store_url'),
     '[images] image_store_url'),
]


@pytest.mark.parametrize('call, field', WRAPPER_ERRORS, ids=[w[1] for w in WRAPPER_ERRORS])
def test_wrapper_errors_name_the_field(call, field):
    with pytest.raises(exception.InvalidRequest) as err:
        call(make_conf())
    assert err.value.field == field
    assert err.value.reason.startswith('unknown ')
    assert 'nosuch' not in err.value.message and 'gopher' not in err.value.message
