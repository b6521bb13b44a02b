"""A private RabbitMQ node for tests that restart the broker (or use TLS).

Restarting the machine's shared broker would break every other test running
against it, so these tests start their own node beside it: its own node
name, ports and data directory under a temp dir, started with the Debian
wrapper (which drops to the rabbitmq user) and removed at the end.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def available():
    return bool(shutil.which('rabbitmq-server') and shutil.which('rabbitmqctl')
                and os.geteuid() == 0)


class PrivateBroker:

    def __init__(self, tls=None, name=None):
        """``tls``: dict with cacertfile/certfile/keyfile for a TLS listener;
        ``name``: the node name before the @ (default: a unique one)."""
        self.dir = tempfile.mkdtemp(prefix='ca-rmq-')
        os.chmod(self.dir, 0o755)
        self.suffix = uuid.uuid4().hex[:8]
        self.node = '%s@%s' % (name or 'catest' + self.suffix,
                               socket.gethostname().split('.')[0])
        self.port = _free_port()
        self.tls_port = _free_port() if tls else None
        self.dist_port = _free_port()
        for sub in ('mnesia', 'log'):
            os.makedirs(os.path.join(self.dir, sub))
        with open(os.path.join(self.dir, 'enabled_plugins'), 'w') as f:
            f.write('[].\n')
        lines = ['listeners.tcp.default = %d' % self.port,
                 'loopback_users = none']
        if tls:
            lines += ['listeners.ssl.default = %d' % self.tls_port,
                      'ssl_options.cacertfile = %s' % tls['cacertfile'],
                      'ssl_options.certfile = %s' % tls['certfile'],
                      'ssl_options.keyfile = %s' % tls['keyfile'],
                      'ssl_options.verify = verify_none',
                      'ssl_options.fail_if_no_peer_cert = false']
        with open(os.path.join(self.dir, 'rabbitmq.conf'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        subprocess.run(['chown', '-R', 'rabbitmq:rabbitmq', self.dir],
                       check=True)
        self.env = dict(
            os.environ,
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(self.dir, 'mnesia'),
            RABBITMQ_LOG_BASE=os.path.join(self.dir, 'log'),
            RABBITMQ_PID_FILE=os.path.join(self.dir, 'pid'),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir,
                                                       'enabled_plugins'),
            RABBITMQ_CONFIG_FILE=os.path.join(self.dir, 'rabbitmq'))

    @property
    def url(self):
        return 'rabbit://guest:guest@localhost:%d/' % self.port

    def ctl(self, *args, timeout=60):
        return subprocess.run(['rabbitmqctl', '-n', self.node] + list(args),
                              env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=True)

    def start(self):
        subprocess.run(['rabbitmq-server', '-detached'], env=self.env,
                       check=True, capture_output=True, timeout=60)
        self.ctl('wait', os.path.join(self.dir, 'pid'), timeout=120)
        self.running = True
        return self

    def stop_app(self):
        self.ctl('stop_app')

    def start_app(self):
        self.ctl('start_app')

    running = False

    def stop(self):
        """Stop the whole node (data kept: start() brings it back)."""
        self.running = False
        self.ctl('stop')
        pidfile = os.path.join(self.dir, 'pid')
        end = time.monotonic() + 30
        while os.path.exists(pidfile) and time.monotonic() < end:
            try:
                with open(pidfile) as f:
                    os.kill(int(f.read().strip()), 0)
            except (OSError, ValueError):
                break
            time.sleep(0.2)

    def kill(self):
        """SIGKILL the node's Erlang VM: a crash, no clean shutdown."""
        with open(os.path.join(self.dir, 'pid')) as f:
            pid = int(f.read().strip())
        self.running = False
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        # A dead node's pid file would make the next start's wait return
        # at once.
        os.unlink(os.path.join(self.dir, 'pid'))

    def destroy(self):
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - already down
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def list_queues(self):
        out = self.ctl('list_queues', '-q', 'name', 'messages').stdout
        return dict(line.rsplit(None, 1) for line in out.splitlines()
                    if line.strip() and not line.startswith('name'))


@pytest.fixture
def private_broker():
    """A private RabbitMQ node; skipped (failed in CI) if it cannot run."""
    if not available():
        msg = 'cannot start a private RabbitMQ node (need root and rabbitmq)'
        if os.environ.get('CI'):
            pytest.fail(msg)
        pytest.skip(msg)
    broker = PrivateBroker().start()
    yield broker
    broker.destroy()


class PrivateCluster:
    """Three private nodes joined into one RabbitMQ cluster on loopback.

    Each node has its own name, ports and data directory (NOTES.md,
    "RabbitMQ extras"); they share the rabbitmq user's Erlang cookie, as
    every node started through the Debian wrapper does. ``url`` names all
    three, as a ``transport_url`` for a cluster does.
    """

    def __init__(self, size=3):
        tag = uuid.uuid4().hex[:6]
        self.nodes = [PrivateBroker(name='caclu%s-%d' % (tag, i + 1))
                      for i in range(size)]

    def start(self):
        first = self.nodes[0].start()
        for node in self.nodes[1:]:
            node.start()
            node.ctl('stop_app')
            node.ctl('join_cluster', first.node)
            node.ctl('start_app')
        return self

    @property
    def url(self):
        return self.url_of(self.nodes)

    @staticmethod
    def url_of(nodes):
        """A transport_url naming ``nodes``, tried in this order."""
        return 'rabbit://' + ','.join('guest:guest@localhost:%d' % n.port
                                      for n in nodes) + '/'

    def node_named(self, erlang_name):
        return next(n for n in self.nodes if n.node == erlang_name)

    def leader_of(self, queue, via=None):
        """The node leading quorum queue ``queue`` (asked of ``via``)."""
        via = via or next(n for n in self.nodes if n.running)
        out = via.ctl('list_queues', '-q', '--no-table-headers', 'name',
                      'leader').stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return self.node_named(parts[1])
        raise AssertionError('no leader for %s in:\n%s' % (queue, out))

    def destroy(self):
        for node in reversed(self.nodes):
            node.destroy()


@pytest.fixture(scope='module')
def private_cluster():
    """A private 3-node RabbitMQ cluster for the module (it takes ~30 s to
    form); skipped (failed in CI) if it cannot run."""
    if not available():
        msg = 'cannot start a private RabbitMQ cluster (need root and rabbitmq)'
        if os.environ.get('CI'):
            pytest.fail(msg)
        pytest.skip(msg)
    cluster = PrivateCluster()
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    yield cluster
    cluster.destroy()
