"""Configuration: the sample file, 2012 nova.conf names, derived values, errors."""

import difflib
import io
import os
import pathlib

import pytest
from oslo_config import cfg
from oslo_config import generator

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.conf import libvirt as libvirt_conf
from compute_agent.conf import opts as conf_opts

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATOR_CONF = ROOT / 'etc' / 'compute-agent' / 'compute-agent-config-generator.conf'
SAMPLE = ROOT / 'etc' / 'compute-agent' / 'compute-agent.conf.sample'


@pytest.fixture(autouse=True)
def _no_environment_options(monkeypatch):
    """oslo.config also reads OS_<GROUP>__<OPTION> variables: keep them out."""
    for name in list(os.environ):
        if name.startswith('OS_'):
            monkeypatch.delenv(name)


def _load(tmp_path, text):
    path = tmp_path / 'nova.conf'
    path.write_text(text)
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf(args=['--config-file', str(path)], project='compute-agent',
         default_config_files=[])
    return conf


# -- (a) the committed sample is what the generator writes today -----------

def test_sample_config_is_current():
    gen_conf = cfg.ConfigOpts()
    generator.register_cli_opts(gen_conf)
    gen_conf(args=['--config-file', str(GENERATOR_CONF)], default_config_files=[])
    assert gen_conf.namespace == ['compute_agent', 'oslo.log']
    assert gen_conf.wrap_width == 79
    assert gen_conf.output_file == 'etc/compute-agent/compute-agent.conf.sample'
    out = io.StringIO()
    generator.generate(gen_conf, output_file=out)
    generated = out.getvalue()
    committed = SAMPLE.read_text()
    if generated != committed:
        diff = ''.join(difflib.unified_diff(
            committed.splitlines(True), generated.splitlines(True),
            'committed', 'generated', n=1))
        pytest.fail('%s is stale: run `tox -e genconfig` and commit the result.\n%s'
                    % (SAMPLE.relative_to(ROOT), diff[:4000]))


def test_sample_documents_every_group():
    text = SAMPLE.read_text()
    for group in ('DEFAULT', 'libvirt', 'vnc', 'images', 'rpc', 'metrics'):
        assert '[%s]' % group in text


# -- (b) a 2012 nova.conf still configures the agent ------------------------

LEGACY = [
    # (2012 [DEFAULT] name, value in the file, modern group, option, expected)
    ('libvirt_type', 'qemu', 'libvirt', 'virt_type', 'qemu'),
    ('libvirt_uri', 'qemu+tcp://hv1/system', 'libvirt', 'connection_uri',
     'qemu+tcp://hv1/system'),
    ('libvirt_disk_prefix', 'sd', 'libvirt', 'disk_prefix', 'sd'),
    ('use_cow_images', 'false', None, 'use_cow_images', False),
    ('instances_path', '/srv/nova/instances', None, 'instances_path',
     '/srv/nova/instances'),
    ('rescue_image_id', 'rescue-img', 'libvirt', 'rescue_image_id', 'rescue-img'),
    ('rescue_kernel_id', 'rescue-aki', 'libvirt', 'rescue_kernel_id', 'rescue-aki'),
    ('rescue_ramdisk_id', 'rescue-ari', 'libvirt', 'rescue_ramdisk_id', 'rescue-ari'),
    ('vnc_enabled', 'false', 'vnc', 'enabled', False),
    ('vnc_keymap', 'de', 'vnc', 'keymap', 'de'),
    ('vncserver_listen', '0.0.0.0', 'vnc', 'server_listen', '0.0.0.0'),
    ('use_usb_tablet', 'false', 'libvirt', 'use_usb_tablet', False),
    ('libvirt_vif_driver', 'nova.virt.libvirt.vif.LibvirtBridgeDriver', 'libvirt',
     'vif_driver', 'nova.virt.libvirt.vif.LibvirtBridgeDriver'),
    ('libvirt_cpu_mode', 'host-passthrough', 'libvirt', 'cpu_mode', 'host-passthrough'),
    ('libvirt_wait_soft_reboot_seconds', '30', 'libvirt', 'wait_soft_reboot_seconds', 30),
    ('vncserver_proxyclient_address', '192.0.2.10', 'vnc',
     'server_proxyclient_address', '192.0.2.10'),
]

NOVA_CONF_2012 = """\
[DEFAULT]
# a real Essex/Folsom nova.conf carries many options this agent does not know
compute_driver = libvirt.LibvirtDriver
rabbit_host = 192.0.2.1
verbose = True
%s
"""


def _value(conf, group, option):
    return conf[option] if group is None else conf[group][option]


@pytest.mark.parametrize('old, text, group, option, expected', LEGACY,
                         ids=[row[0] for row in LEGACY])
def test_2012_name_still_works(tmp_path, old, text, group, option, expected):
    conf = _load(tmp_path, NOVA_CONF_2012 % ('%s = %s' % (old, text)))
    assert _value(conf, group, option) == expected
    agent_conf.check(conf)


def test_2012_cpu_model_with_custom_mode(tmp_path):
    conf = _load(tmp_path, NOVA_CONF_2012 % (
        'libvirt_cpu_mode = custom\nlibvirt_cpu_model = Nehalem'))
    assert conf.libvirt.cpu_mode == 'custom'
    assert conf.libvirt.cpu_model == 'Nehalem'
    agent_conf.check(conf)


def test_whole_2012_file_at_once(tmp_path):
    lines = '\n'.join('%s = %s' % (old, text) for old, text, *_ in LEGACY)
    conf = _load(tmp_path, NOVA_CONF_2012 % lines)
    for _old, _text, group, option, expected in LEGACY:
        assert _value(conf, group, option) == expected
    agent_conf.check(conf)


def test_modern_name_wins_over_2012_name(tmp_path):
    conf = _load(tmp_path, NOVA_CONF_2012 % 'libvirt_type = xen'
                 + '\n[libvirt]\nvirt_type = qemu\n')
    assert conf.libvirt.virt_type == 'qemu'


def test_every_legacy_name_is_declared():
    declared = set()
    for _group, opts in conf_opts.list_opts():
        for opt in opts:
            declared.update(d.name for d in opt.deprecated_opts
                            if d.group in (None, 'DEFAULT'))
            declared.add(opt.name)
    for old, *_ in LEGACY:
        assert old in declared
    assert 'libvirt_cpu_model' in declared


# -- (c) the connection URI per virt type -----------------------------------

@pytest.mark.parametrize('virt_type, uri', [
    ('kvm', 'qemu:///system'),
    ('qemu', 'qemu:///system'),
    ('xen', 'xen:///'),
    ('lxc', 'lxc:///'),
    ('uml', 'uml:///system'),
])
def test_connection_uri_derived_from_virt_type(tmp_path, virt_type, uri):
    conf = _load(tmp_path, '[libvirt]\nvirt_type = %s\n' % virt_type)
    assert libvirt_conf.connection_uri(conf) == uri


def test_every_virt_type_has_a_uri():
    assert set(libvirt_conf.DEFAULT_URIS) == set(libvirt_conf.VIRT_TYPES)


@pytest.mark.parametrize('virt_type', libvirt_conf.VIRT_TYPES)
def test_explicit_connection_uri_wins(tmp_path, virt_type):
    conf = _load(tmp_path, '[libvirt]\nvirt_type = %s\nconnection_uri = test:///default\n'
                 % virt_type)
    assert libvirt_conf.connection_uri(conf) == 'test:///default'


def test_default_connection_uri_is_kvm_system(tmp_path):
    conf = _load(tmp_path, '')
    agent_conf.check(conf)
    assert conf.libvirt.virt_type == 'kvm'
    assert libvirt_conf.connection_uri(conf) == 'qemu:///system'


def test_overrides_do_not_leak_between_config_objects():
    """Module-level OptGroups shared by several ConfigOpts must not share state."""
    one = agent_conf.register_all(cfg.ConfigOpts())
    two = agent_conf.register_all(cfg.ConfigOpts())
    one(args=[], default_config_files=[])
    two(args=[], default_config_files=[])
    one.set_override('connection_uri', 'test:///default', group='libvirt')
    try:
        assert two.libvirt.connection_uri == ''
    finally:
        one.clear_override('connection_uri', group='libvirt')


# -- (d) bad values stop the agent, naming the option -----------------------

@pytest.mark.parametrize('text, option', [
    ('[libvirt]\nvirt_type = foo\n', 'virt_type'),
    ('[DEFAULT]\nlibvirt_type = foo\n', 'virt_type'),
    ('[DEFAULT]\nreport_interval = abc\n', 'report_interval'),
    ('[DEFAULT]\nmax_concurrent_builds = 0\n', 'max_concurrent_builds'),
    ('[libvirt]\ncpu_mode = custom\n', 'cpu_model'),
    ('[DEFAULT]\nlibvirt_cpu_mode = custom\n', 'cpu_model'),
    ('[libvirt]\ncpu_model = Nehalem\n', 'cpu_model'),
    ('[libvirt]\ncpu_mode = bogus\n', 'cpu_mode'),
    ('[vnc]\nenabled = maybe\n', 'enabled'),
    ('[metrics]\nport = 70000\n', 'port'),
])
def test_bad_value_raises_config_error_naming_option(tmp_path, text, option):
    conf = _load(tmp_path, text)
    with pytest.raises(exception.ConfigError) as info:
        agent_conf.check(conf)
    assert info.value.kwargs['option'] == option
    assert option in str(info.value)


# -- guest agent options (issue 15) ---------------------------------------------------

def test_guest_agent_options_defaults(tmp_path):
    conf = _load(tmp_path, '')
    assert conf.libvirt.guest_agent is True
    assert conf.libvirt.guest_agent_timeout == 30


def test_guest_agent_options_set(tmp_path):
    conf = _load(tmp_path, '[libvirt]\nguest_agent = false\n'
                           'guest_agent_timeout = 3\n')
    assert conf.libvirt.guest_agent is False
    assert conf.libvirt.guest_agent_timeout == 3


@pytest.mark.parametrize('text', ['[libvirt]\nguest_agent_timeout = 0\n',
                                  '[libvirt]\nguest_agent_timeout = abc\n',
                                  '[libvirt]\nguest_agent = maybe\n'])
def test_guest_agent_bad_values_name_the_option(tmp_path, text):
    conf = _load(tmp_path, text)
    with pytest.raises(exception.ConfigError) as info:
        agent_conf.check(conf)
    assert info.value.kwargs['option'] in text
