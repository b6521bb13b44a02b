"""Fixtures for the RPC tests: broker check, a test dispatcher, servers.

``FakeDispatcher`` is a TEST DOUBLE of the instance manager
(compute_agent/manager.py), which replaces it in integration: it implements
the same dispatcher interface with trivial methods (ping, echo, sleep, work,
fail, spawn, get_info) so the wire, ordering, dedup and recovery behaviour of
the server can be tested without libvirt.

Every test gets its own control exchange, topic, state topic and host (uuid
suffixes), so tests can share one broker, and everything declared is deleted
afterwards.
"""

import collections
import os
import socket
import tempfile
import threading
import time
import uuid as uuidlib

import kombu
import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.journal import Journal
from compute_agent.rpc import notifier as notifier_mod
from compute_agent.rpc import publisher as publisher_mod
from compute_agent.rpc import server as server_mod
from compute_agent.rpc import topology

DEFAULT_URL = 'rabbit://guest:guest@localhost:5672/'


def broker_url():
    return os.environ.get('COMPUTE_AGENT_TEST_TRANSPORT_URL', DEFAULT_URL)


def kombu_url(url):
    return url.replace('rabbit://', 'amqp://', 1)


def broker_reachable(url, timeout=3):
    try:
        with kombu.Connection(kombu_url(url), connect_timeout=timeout) as c:
            c.connect()
        return True
    except (OSError, socket.error, Exception):  # noqa: BLE001
        return False


def require_broker(url=None):
    """Skip without a broker; in CI (env CI set) that is a failure."""
    url = url or broker_url()
    if not broker_reachable(url):
        msg = 'RabbitMQ not reachable at %s' % url
        if os.environ.get('CI'):
            pytest.fail(msg + ' (CI is set: not skipping)')
        pytest.skip(msg)
    return url


def make_conf(url, state_path, suffix=None, host=None, **rpc_overrides):
    """A private ConfigOpts with unique names (not oslo's global CONF)."""
    suffix = suffix or uuidlib.uuid4().hex[:8]
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent-test', default_config_files=[])
    conf.set_override('transport_url', url)
    conf.set_override('control_exchange', 'test-ex-' + suffix)
    conf.set_override('host', host or 'host-' + suffix)
    conf.set_override('state_path', state_path)
    conf.set_override('max_concurrent_builds', 4)
    conf.set_override('graceful_shutdown_timeout', 10)
    rpc = {'topic': 'compute-' + suffix, 'state_topic': 'sched-' + suffix,
           'reconnect_interval': 0.2, 'reconnect_interval_max': 1.0,
           'reply_timeout': 10}
    rpc.update(rpc_overrides)
    for k, v in rpc.items():
        conf.set_override(k, v, group='rpc')
    return conf


class FakeDispatcher:
    """Test double of the manager's dispatcher interface (see module doc)."""

    METHODS = {'ping', 'echo', 'sleep', 'work', 'fail', 'spawn', 'get_info',
               'list_instances'}
    # As the manager's: never held for admission (rpc/server.py).
    unheld_methods = frozenset(('ping', 'echo', 'get_info',
                                   'list_instances'))

    def __init__(self, conf, journal, notifier):
        self.conf = conf
        self.journal = journal
        self.notifier = notifier
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.runs = collections.Counter()     # token -> times run
        self.order = collections.defaultdict(list)  # key -> tokens in order
        self.active = collections.Counter()   # key -> running now
        self.max_active = collections.Counter()
        self.contexts = []

    # dispatcher interface
    def validate(self, method, args, version):
        if method not in self.METHODS:
            raise exception.InvalidRequest('method', 'unknown method %s'
                                           % method)
        if method == 'spawn':
            inst = args.get('instance')
            if not isinstance(inst, dict):
                raise exception.InvalidRequest('instance', 'required')
            try:
                uuidlib.UUID(str(inst.get('uuid')))
            except ValueError:
                raise exception.InvalidRequest('instance.uuid',
                                               'not a UUID') from None
            if not isinstance(inst.get('name'), str):
                raise exception.InvalidRequest('instance.name', 'required',
                                               uuid=inst['uuid'])
        return dict(args)

    def key(self, method, args):
        if method == 'spawn':
            return args['instance']['uuid']
        if method in ('sleep', 'work'):
            return args.get('key')
        return None   # ping, echo, get_info (read-only) run at once

    def instance_uuid_of(self, method, args):
        if isinstance(args, dict) and isinstance(args.get('instance'), dict):
            return args['instance'].get('uuid')
        return None

    def dispatch(self, method, args, context):
        with self.lock:
            self.contexts.append(dict(context))
        return getattr(self, 'do_' + method)(context, **args)

    def report_invalid(self, method, uuid, error, context):
        self.notifier.instance_state_changed(
            context, instance_uuid=uuid, vm_state='error', task_state=None,
            power_state=0, event=method + '.error', error=error.to_dict()
            if isinstance(error, exception.AgentError) else
            {'class': type(error).__name__, 'message': str(error)},
            sequence=self.journal.instance_sequence(uuid))

    # methods
    def do_ping(self, context):
        return {'host': self.conf.host, 'version': '1.0',
                'uptime_s': time.monotonic() - self.started}

    def do_echo(self, context, **args):
        return args

    def do_work(self, context, token, key=None, seconds=0):
        """Count runs of ``token``; track per-key order and overlap."""
        with self.lock:
            self.runs[token] += 1
            self.order[key].append(token)
            self.active[key] += 1
            self.max_active[key] = max(self.max_active[key], self.active[key])
        try:
            if seconds:
                time.sleep(seconds)
        finally:
            with self.lock:
                self.active[key] -= 1
        return {'token': token}

    def do_sleep(self, context, seconds, key=None):
        time.sleep(seconds)
        return {'slept': seconds}

    def do_fail(self, context, cls='InstanceNotFound', **kwargs):
        if cls in exception.WIRE_ERRORS:
            raise exception.WIRE_ERRORS[cls](**kwargs)
        raise RuntimeError('boom')

    def _save(self, context, uuid, record, event):
        seq = self.journal.save_instance(uuid, record)
        self.notifier.instance_state_changed(
            context, instance_uuid=uuid, vm_state=record['vm_state'],
            task_state=record['task_state'],
            power_state=record['power_state'], event=event, sequence=seq)

    def do_spawn(self, context, instance, image_meta=None, **kw):
        uuid = instance['uuid']
        with self.lock:
            self.runs[uuid] += 1
        record = {'uuid': uuid, 'name': instance['name'],
                  'host': self.conf.host, 'vm_state': 'building',
                  'task_state': 'spawning', 'power_state': 0, 'error': None}
        self._save(context, uuid, record, 'spawn.start')
        time.sleep(float(instance.get('build_seconds', 0)))
        record.update(vm_state='active', task_state=None, power_state=1)
        self._save(context, uuid, record, 'spawn.end')
        return record

    def do_get_info(self, context, instance_uuid):
        record = self.journal.get_instance(instance_uuid)
        if record is None:
            raise exception.InstanceNotFound(uuid=instance_uuid)
        return record

    def do_list_instances(self, context):
        return self.journal.list_instances()


class AgentHandle:
    """One server with its journal, notifier and fake dispatcher."""

    def __init__(self, conf, wait_ready=True):
        self.conf = conf
        self.server = None
        self.start(wait_ready)

    def start(self, wait_ready=True):
        self.journal = Journal(self.conf.state_path)
        self.publisher = publisher_mod.Publisher(self.journal, self.conf)
        self.notifier = notifier_mod.Notifier(self.journal, self.conf)
        self.dispatcher = FakeDispatcher(self.conf, self.journal,
                                         self.notifier)
        self.server = server_mod.RPCServer(self.conf, self.dispatcher,
                                           self.journal, self.publisher)
        self.server.start()
        if wait_ready and not self.server.ready.wait(20):
            raise AssertionError('server did not start consuming')
        return self

    def stop(self, timeout=5):
        if self.server is not None:
            self.server.stop(timeout)
            self.journal.close()
            self.server = None

    def restart(self):
        self.stop()
        return self.start()

    @property
    def names(self):
        return topology.names(self.conf)


def cleanup_broker(url, confs):
    """Delete every queue and exchange the tests' servers declared."""
    try:
        with kombu.Connection(kombu_url(url), connect_timeout=3) as c:
            for conf in confs:
                ch = c.channel()
                try:
                    topology.delete(ch, conf)
                    ch.exchange_delete(conf.control_exchange)
                except Exception:  # noqa: BLE001 - best effort
                    pass
                finally:
                    try:
                        ch.close()
                    except Exception:  # noqa: BLE001
                        pass
    except Exception:  # noqa: BLE001
        pass


@pytest.fixture
def agents():
    """Factory: ``agents(**rpc_overrides)`` starts a server; all are stopped
    and their broker objects deleted at the end of the test."""
    url = require_broker()
    handles, tmpdirs = [], []

    def factory(suffix=None, host=None, url=url, wait_ready=True,
                **overrides):
        tmp = tempfile.mkdtemp(prefix='ca-rpc-test-')
        tmpdirs.append(tmp)
        conf = make_conf(url, tmp, suffix=suffix, host=host, **overrides)
        handle = AgentHandle(conf, wait_ready)
        handles.append(handle)
        return handle

    yield factory
    for h in handles:
        h.stop(2)
    cleanup_broker(url, [h.conf for h in handles])
    import shutil
    for tmp in tmpdirs:
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for(predicate, timeout=10, interval=0.05, message='condition'):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError('timed out waiting for %s' % message)


@pytest.fixture
def oslo_transport():
    """A stock oslo.messaging transport (global cfg.CONF, as NOTES.md says)."""
    import oslo_messaging
    url = require_broker()
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    yield transport
    reply_q = getattr(getattr(transport, '_driver', None), '_reply_q', None)
    transport.cleanup()
    if reply_q:  # oslo leaves it to expire in 30 min; tidy up now
        with kombu.Connection(kombu_url(url)) as c:
            c.channel().queue_delete(reply_q)


def oslo_client(transport, conf, server=None, **kwargs):
    import oslo_messaging
    target = oslo_messaging.Target(
        topic=conf.rpc.topic, server=conf.host if server is None else server,
        exchange=conf.control_exchange)
    kwargs.setdefault('timeout', 20)
    return oslo_messaging.get_rpc_client(transport, target, **kwargs)
