"""The two real nova.conf files drive a real TLS broker connection.

tests/data/nova/folsom-2012.2.conf (trimmed from nova 2012.2's
etc/nova/nova.conf.sample: rabbit_host/rabbit_port/rabbit_userid/
rabbit_password/rabbit_virtual_host, rabbit_use_ssl, kombu_ssl_*,
rabbit_durable_queues in [DEFAULT]) and tests/data/nova/current.conf (nova
master's names: transport_url plus [oslo_messaging_rabbit] ssl, ssl_ca_file,
ssl_version, amqp_durable_queues, rabbit_quorum_queue,
heartbeat_timeout_threshold) are loaded as they are, and an agent RPC server
(with the test dispatcher of rpc_fixtures) serves from them on a private
RabbitMQ node with a TLS listener only reachable with the test CA. The
broker itself reports what took effect: the user, vhost, TLS version and
heartbeat of each connection, the queue type and the exchange durability.
"""

import os
import uuid

import pytest

try:
    from tests.functional.rpc_fixtures import AgentHandle
    from tests.functional.test_rpc_tls import private_tls_broker
    from tests.unit import nova_conf_fixtures as nf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'unit'))
    from rpc_fixtures import AgentHandle
    from test_rpc_tls import private_tls_broker
    import nova_conf_fixtures as nf

from compute_agent import conf as agent_conf
from compute_agent.conf import rabbit
from compute_agent.rpc import client as client_mod

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]


@pytest.fixture(scope='module')
def tls_broker():
    with private_tls_broker('ca-novaconf-') as (broker, _certs, ca):
        broker.ctl('add_user', 'nova', nf.RABBIT_PASSWORD)
        for vhost in ('folsom', 'nova'):
            broker.ctl('add_vhost', vhost)
            broker.ctl('set_permissions', '-p', vhost, 'nova', '.*', '.*', '.*')
        yield broker, ca


def _rows(broker, *args):
    out = broker.ctl(*args).stdout
    return [line.split('\t') for line in out.splitlines()
            if line.strip() and '\t' in line]


@pytest.mark.parametrize('name, vhost, queue_type, heartbeat', [
    (nf.FOLSOM, 'folsom', 'classic', 60),
    (nf.CURRENT, 'nova', 'quorum', 30),
])
def test_nova_conf_connects_as_configured(tls_broker, tmp_path, name, vhost,
                                          queue_type, heartbeat):
    broker, ca = tls_broker
    exchange = 'nova-' + uuid.uuid4().hex[:8]
    path = nf.render(name, tmp_path / name, STATE_PATH=tmp_path / 'state',
                     CA_FILE=ca, RABBIT_PORT=broker.tls_port,
                     RABBIT_VHOST=vhost, CONTROL_EXCHANGE=exchange)
    conf = nf.load(path)
    agent_conf.check(conf)
    # Only the TLS port is named: a plaintext or wrong-CA connection fails.
    assert broker.tls_port != broker.port
    agent = AgentHandle(conf)
    try:
        with client_mod.AgentClient(
                rabbit.transport_url(conf), conf.host, topic=conf.rpc.topic,
                exchange=conf.control_exchange, timeout=20,
                durable_exchange=conf.rpc.amqp_durable_queues,
                conf=conf) as client:
            assert client.ping()['host'] == 'compute_01.dc1'
            connections = _rows(broker, 'list_connections', '-q', 'user',
                                'vhost', 'ssl', 'ssl_protocol', 'timeout')
    finally:
        agent.stop(5)
    mine = [c for c in connections if c[:2] == ['nova', vhost]]
    assert mine, connections
    # Every connection: the configured user and vhost, TLS 1.2 as pinned by
    # kombu_ssl_version / ssl_version (the node would otherwise pick 1.3).
    assert all(c[2] == 'true' and c[3] == 'tlsv1.2' for c in mine), mine
    # The agent's connections carry the heartbeat (the client's has none).
    assert str(heartbeat) in [c[4] for c in mine], mine

    queues = dict((q[0], q[1:]) for q in _rows(
        broker, 'list_queues', '-q', '-p', vhost, 'name', 'type', 'durable'))
    assert queues['compute.compute_01.dc1'] == [queue_type, 'true'], queues
    exchanges = dict(_rows(broker, 'list_exchanges', '-q', '-p', vhost,
                           'name', 'durable'))
    assert exchanges[exchange] == 'true'          # amqp_durable_queues
