"""A nova.conf configures the agent: real Folsom (2012.2) and current files.

The files are tests/data/nova/folsom-2012.2.conf (trimmed from nova 2012.2's
etc/nova/nova.conf.sample) and tests/data/nova/current.conf (nova master's
names and groups, [oslo_messaging_rabbit] from oslo.messaging). These tests
check the effective options; tests/functional/test_nova_conf_broker.py
connects to a real TLS broker with them.
"""

import logging
import os

import pytest

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.conf import rabbit
from compute_agent.conf import unknown
from compute_agent.rpc import transport

try:
    from tests.unit import nova_conf_fixtures as nf
except ImportError:      # run from inside tests/unit
    import nova_conf_fixtures as nf


@pytest.fixture(autouse=True)
def _no_environment_options(monkeypatch):
    for name in list(os.environ):
        if name.startswith('OS_'):
            monkeypatch.delenv(name)


VALUES = {'STATE_PATH': '/srv/nova', 'CA_FILE': '/etc/ssl/rabbit-ca.pem',
          'RABBIT_PORT': 5671, 'RABBIT_VHOST': 'nova',
          'CONTROL_EXCHANGE': 'nova'}


def _conf(tmp_path, name, text=None):
    path = nf.render(name, tmp_path / name, **VALUES)
    extra = []
    if text is not None:
        extra_path = tmp_path / 'extra.conf'
        extra_path.write_text(text)
        extra = [extra_path]
    conf = nf.load(path, *extra)
    agent_conf.check(conf)
    return conf


def test_folsom_nova_conf(tmp_path):
    conf = _conf(tmp_path, nf.FOLSOM)
    # 2012 rabbit_* make the transport URL (password url-quoted).
    assert rabbit.transport_url(conf) == (
        'rabbit://nova:n0va%20pass%2Cw%C3%B6rd@localhost:5671/nova')
    url = transport.parse_url(rabbit.transport_url(conf))
    assert (url.hosts[0].userid, url.hosts[0].password, url.virtual_host) == (
        'nova', nf.RABBIT_PASSWORD, 'nova')
    assert conf.control_exchange == 'nova'
    # rabbit_use_ssl, kombu_ssl_*, rabbit_durable_queues, rabbit_retry_*.
    rpc = conf.rpc
    assert (rpc.ssl, rpc.ssl_ca_file, rpc.ssl_version) == (
        True, '/etc/ssl/rabbit-ca.pem', 'TLSv1_2')
    assert rpc.amqp_durable_queues is True
    assert (rpc.reconnect_interval, rpc.reconnect_max_attempts) == (2.0, 0)
    opts = transport.ssl_options(conf, 'localhost', url.ssl)
    assert opts['ca_certs'] == '/etc/ssl/rabbit-ca.pem'
    assert opts['tls_minimum_version'] == opts['tls_maximum_version']
    # host is an opaque string; my_ip feeds $my_ip.
    assert conf.host == 'compute_01.dc1'
    assert conf.my_ip == '192.0.2.21'
    assert conf.vnc.server_listen == '0.0.0.0'
    assert conf.vnc.server_proxyclient_address == '192.0.2.21'
    assert conf.vnc.keymap == 'de' and conf.vnc.enabled is True
    # The image cache keeps its bases.
    assert conf.images.remove_unused_base_images is False
    assert conf.images.remove_unused_original_minimum_age_seconds == 3600
    assert conf.use_cow_images is False
    assert conf.instances_path == '/srv/nova/instances'
    assert conf.libvirt.virt_type == 'qemu'


def test_current_nova_conf(tmp_path):
    conf = _conf(tmp_path, nf.CURRENT)
    assert rabbit.transport_url(conf) == conf.transport_url
    assert transport.parse_url(conf.transport_url).hosts[0].password == \
        nf.RABBIT_PASSWORD
    rpc = conf.rpc
    assert rpc.amqp_durable_queues is True
    assert rpc.rabbit_quorum_queue is True
    assert rpc.rabbit_delivery_limit == 5
    assert rpc.heartbeat == 30
    assert (rpc.reconnect_interval, rpc.reconnect_interval_max) == (2.0, 20.0)
    assert (rpc.ssl, rpc.ssl_ca_file, rpc.ssl_version) == (
        True, '/etc/ssl/rabbit-ca.pem', 'TLSv1_2')
    assert conf.images.image_cache_manager_interval == 1200
    assert conf.images.remove_unused_base_images is False
    assert conf.images.remove_unused_original_minimum_age_seconds == 7200
    assert conf.vnc.server_listen == '0.0.0.0'
    assert conf.vnc.server_proxyclient_address == '192.0.2.22'
    assert conf.host == 'compute_01.dc1'
    assert conf.use_cow_images is True and conf.force_config_drive is True
    assert conf.libvirt.virt_type == 'qemu' and conf.libvirt.cpu_mode == 'none'


@pytest.mark.parametrize('name, expected', [
    (nf.FOLSOM, {'DEFAULT': ['compute_driver', 'glance_host',
                             'novncproxy_base_url', 'sql_connection',
                             'verbose']}),
    (nf.CURRENT, {'DEFAULT': ['compute_driver'], 'glance': ['api_servers'],
                  'image_cache': ['subdirectory_name'],
                  'neutron': ['auth_url', 'password'],
                  'oslo_concurrency': ['lock_path'],
                  'placement': ['auth_type', 'password'],
                  'vnc': ['novncproxy_base_url']}),
])
def test_unknown_options_are_named_once_without_values(tmp_path, caplog, name,
                                                       expected):
    conf = _conf(tmp_path, name)
    with caplog.at_level(logging.WARNING):
        found = unknown.warn_unknown(conf)
    assert {s: sorted(n) for s, n in found.items()} == expected
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(expected)          # one line per section
    for section, names in expected.items():
        assert any('[%s]' % section in w and all(n in w for n in names)
                   for w in warnings), warnings
    text = '\n'.join(warnings)
    for secret in ('nova-db-pass', 'neutron-service-pass',
                   'placement-service-pass', nf.RABBIT_PASSWORD):
        assert secret not in text


def test_known_options_and_deprecated_names_are_not_reported(tmp_path):
    path = tmp_path / 'a.conf'
    path.write_text('[DEFAULT]\nlibvirt_type = qemu\ndebug = true\n'
                    'log_file = /tmp/x.log\nrabbit_host = h\n'
                    '[Libvirt]\ncpu_mode = none\n'
                    '[oslo_messaging_rabbit]\nrabbit_port = 5673\nssl = true\n'
                    '[vnc]\nvncserver_listen = 0.0.0.0\n'
                    '[image_cache]\nmanager_interval = 60\n')
    conf = nf.load(path)
    assert unknown.unknown_options(conf) == {}


def test_config_dir_files_are_checked_too(tmp_path):
    d = tmp_path / 'conf.d'
    d.mkdir()
    (d / '10-x.conf').write_text('[DEFAULT]\nmistyped_optoin = 1\n')
    conf = nf.load()
    conf(args=['--config-dir', str(d)], default_config_files=[])
    assert unknown.unknown_options(conf) == {'DEFAULT': ['mistyped_optoin']}


def test_explicit_transport_url_wins_over_rabbit_options(tmp_path):
    path = tmp_path / 'a.conf'
    path.write_text('[DEFAULT]\nrabbit_host = old\nrabbit_password = p\n'
                    'transport_url = rabbit://u:v@new:5672/\n')
    conf = nf.load(path)
    assert rabbit.transport_url(conf) == 'rabbit://u:v@new:5672/'
    assert transport.Broker(conf).url.hosts[0].hostname == 'new'


@pytest.mark.parametrize('text, url', [
    ('', 'rabbit://guest:guest@localhost:5672/'),
    ('[DEFAULT]\nrabbit_host = mq1\n', 'rabbit://guest:guest@mq1:5672/'),
    ('[DEFAULT]\nrabbit_hosts = mq1:5673, mq2, [fd00::1]:5674, fd00::2\n'
     'rabbit_port = 5670\nrabbit_userid = u\nrabbit_virtual_host = /\n',
     'rabbit://u:guest@mq1:5673,u:guest@mq2:5670,u:guest@[fd00::1]:5674,'
     'u:guest@[fd00::2]:5670/'),
    ('[oslo_messaging_rabbit]\nrabbit_host = mq3\nrabbit_port = 5673\n'
     'rabbit_virtual_host = a/b\n', 'rabbit://guest:guest@mq3:5673/a%2Fb'),
])
def test_transport_url_from_rabbit_options(tmp_path, text, url):
    path = tmp_path / 'a.conf'
    path.write_text(text)
    conf = nf.load(path)
    assert rabbit.transport_url(conf) == url
    assert transport.Broker(conf).url == transport.parse_url(url)


def test_pike_vnc_names(tmp_path):
    path = tmp_path / 'a.conf'
    path.write_text('[DEFAULT]\nmy_ip = 198.51.100.7\n[vnc]\n'
                    'vncserver_listen = 198.51.100.7\n'
                    'vncserver_proxyclient_address = $my_ip\n')
    conf = nf.load(path)
    agent_conf.check(conf)
    assert conf.vnc.server_listen == '198.51.100.7'
    assert conf.vnc.server_proxyclient_address == '198.51.100.7'


def test_my_ip_defaults_to_an_address_of_this_host(tmp_path):
    conf = nf.load()
    assert conf.my_ip and conf.my_ip.count('.') == 3


def test_use_cow_images_in_default_is_not_deprecated(tmp_path, caplog):
    path = tmp_path / 'a.conf'
    path.write_text('[DEFAULT]\nuse_cow_images = false\n')
    with caplog.at_level(logging.WARNING):
        conf = nf.load(path)
        agent_conf.check(conf)
    assert conf.use_cow_images is False
    assert not [r for r in caplog.records if 'use_cow_images' in r.getMessage()]


def test_image_cache_manager_interval_minus_one_disables(tmp_path):
    path = tmp_path / 'a.conf'
    path.write_text('[image_cache]\nmanager_interval = -1\n')
    conf = nf.load(path)
    agent_conf.check(conf)
    assert conf.images.image_cache_manager_interval == 0


@pytest.mark.parametrize('host', ['compute_01.dc1', 'node-1', 'Compute1',
                                  'hôte.example', 'x' * 200])
def test_host_is_a_plain_string(tmp_path, host):
    path = tmp_path / 'a.conf'
    path.write_text('[DEFAULT]\nhost = %s\n' % host)
    conf = nf.load(path)
    agent_conf.check(conf)
    assert conf.host == host


@pytest.mark.parametrize('host, reason', [
    ('compute 1', 'white space'),
    ('compute\x01', 'control'),
    ('compute.*', 'wildcards'),
    ('compute.#', 'wildcards'),
    ('x' * 250, '255 bytes'),
])
def test_host_that_cannot_name_a_queue_is_refused(tmp_path, host, reason):
    conf = nf.load()
    conf.set_override('host', host)
    with pytest.raises(exception.ConfigError) as info:
        agent_conf.check(conf)
    assert info.value.kwargs['option'] == 'host'
    assert reason in str(info.value)
