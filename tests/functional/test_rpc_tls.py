"""TLS to the broker: amqps:// with [rpc] ssl_ca_file, on a private node.

The node gets a throw-away CA and a server certificate for ``localhost``
made with openssl; the agent and the client verify it (CERT_REQUIRED plus
the host name), and a wrong CA is refused.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

try:
    from tests.functional.rabbit_node import PrivateBroker, available
    from tests.functional.rpc_fixtures import agents  # noqa: F401
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from rabbit_node import PrivateBroker, available
    from rpc_fixtures import agents  # noqa: F401

from compute_agent.rpc import client as client_mod
from compute_agent.rpc import transport

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]


def _openssl(*args, cwd):
    subprocess.run(['openssl'] + list(args), cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def make_ca(directory, name='ca'):
    _openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
             '-subj', '/CN=compute-agent test %s' % name,
             '-keyout', name + '.key', '-out', name + '.pem', cwd=directory)
    return os.path.join(directory, name + '.pem')


def make_server_cert(directory):
    _openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost',
             '-keyout', 'server.key', '-out', 'server.csr', cwd=directory)
    with open(os.path.join(directory, 'ext.cnf'), 'w') as f:
        f.write('subjectAltName=DNS:localhost,IP:127.0.0.1\n')
    _openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem',
             '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
             '-extfile', 'ext.cnf', '-out', 'server.pem', cwd=directory)
    for f in os.listdir(directory):
        os.chmod(os.path.join(directory, f), 0o644)


@contextlib.contextmanager
def private_tls_broker(prefix):
    """A private RabbitMQ node with a TLS listener and a test CA: yields
    (broker, certificate directory, CA file); removed afterwards."""
    if not (available() and shutil.which('openssl')):
        msg = 'cannot start a private TLS RabbitMQ node (root, openssl)'
        if os.environ.get('CI'):
            pytest.fail(msg)
        pytest.skip(msg)
    certs = tempfile.mkdtemp(prefix=prefix)
    os.chmod(certs, 0o755)
    ca = make_ca(certs)
    make_server_cert(certs)
    broker = PrivateBroker(tls={
        'cacertfile': ca, 'certfile': os.path.join(certs, 'server.pem'),
        'keyfile': os.path.join(certs, 'server.key')}).start()
    try:
        yield broker, certs, ca
    finally:
        broker.destroy()
        shutil.rmtree(certs, ignore_errors=True)


@pytest.fixture
def tls_broker():
    with private_tls_broker('ca-tls-') as (broker, certs, ca):
        yield broker, ca, make_ca(certs, 'other')


def test_agent_and_client_over_tls(tls_broker, agents):  # noqa: F811
    broker, ca, other_ca = tls_broker
    url = 'amqps://guest:guest@localhost:%d/' % broker.tls_port
    agent = agents(url=url, ssl_ca_file=ca)
    conf = agent.conf
    with client_mod.AgentClient(url, conf.host, topic=conf.rpc.topic,
                                exchange=conf.control_exchange,
                                timeout=10, conf=conf) as client:
        assert client.ping()['host'] == conf.host
    # A broker certificate from another CA is refused.
    conf.set_override('ssl_ca_file', other_ca, group='rpc')
    with pytest.raises(Exception) as err:
        transport.Broker(conf, url).connect_once()
    assert 'certificate' in str(err.value).lower()
