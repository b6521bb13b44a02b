"""The agent as operators run it: a real process, real RabbitMQ, real signals.

The hypervisor is libvirt's in-process ``test:///default`` driver (each agent
process has its own): these tests are about the service, not guests. Guests
on real QEMU are covered by test_e2e_*.py and test_driver.py.
"""

import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid as uuidlib

import kombu
import pytest

from compute_agent.rpc import client as client_mod
from tests.functional import rpc_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(os.path.dirname(sys.executable), 'compute-agent')
SECRETS = ('hunter2-admin-secret', 'rescue-pw-secret', 'tok-secret-0123456789')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class SlowImageServer:
    """Serves image files over HTTP, slowly, so a spawn stays in flight."""

    def __init__(self, directory, seconds):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = os.path.join(directory, os.path.basename(self.path))
                if not os.path.exists(path):
                    self.send_error(404)
                    return
                data = open(path, 'rb').read()
                self.send_response(200)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                chunks = 10
                for i in range(chunks):
                    self.wfile.write(data[i * len(data) // chunks:
                                          (i + 1) * len(data) // chunks])
                    self.wfile.flush()
                    time.sleep(outer.seconds / chunks)

            def log_message(self, *args):
                pass

        self.seconds = seconds
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


class Agent:
    """One agent process with its own host, topic, state and image store."""

    def __init__(self, tmp, extra=None, args=(), env=None):
        rpc_fixtures.require_broker()
        self.tmp = tmp
        self.suffix = uuidlib.uuid4().hex[:8]
        self.host = 'svc-' + self.suffix
        self.topic = 'compute-' + self.suffix
        self.state_topic = 'scheduler-' + self.suffix
        self.store = os.path.join(tmp, 'images')
        os.makedirs(self.store, exist_ok=True)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        os.path.join(self.store, 'img'), '16M'],
                       check=True, timeout=60)
        self.conf_path = os.path.join(tmp, 'agent.conf')
        self.log_path = os.path.join(tmp, 'agent.log')
        self.options = {
            'DEFAULT': {'host': self.host, 'state_path': os.path.join(tmp, 'state'),
                        'transport_url': rpc_fixtures.broker_url(),
                        'report_interval': '1', 'sync_power_state_interval': '1'},
            'rpc': {'topic': self.topic, 'state_topic': self.state_topic},
            'libvirt': {'virt_type': 'qemu', 'connection_uri': 'test:///default',
                        'disk_cachemode': 'writethrough'},
            'images': {'image_store_url': 'file://' + self.store},
            'vnc': {'enabled': 'false'},
        }
        for section, values in (extra or {}).items():
            self.options.setdefault(section, {}).update(values)
        self.write_conf()
        self.args, self.env = list(args), dict(os.environ, **(env or {}))
        self.proc = None

    def write_conf(self):
        with open(self.conf_path, 'w') as f:
            for section, values in self.options.items():
                f.write('[%s]\n' % section)
                for key, value in values.items():
                    f.write('%s = %s\n' % (key, value))

    def start(self, wait=True):
        self.proc = subprocess.Popen(
            [AGENT, '--config-file', self.conf_path, '--log-file', self.log_path]
            + self.args, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        if wait:
            client = self.client()
            try:
                rpc_fixtures.wait_for(lambda: self._pings(client), timeout=30,
                                      message='agent answers ping')
            finally:
                client.close()
        return self

    def _pings(self, client):
        assert self.proc.poll() is None, self.output()
        try:
            client.ping(timeout=1)
            return True
        except Exception:
            return False

    def client(self, context=None):
        return client_mod.AgentClient(
            rpc_fixtures.broker_url(), self.host, topic=self.topic,
            state_topic=self.state_topic, timeout=30, context=context)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        return self.proc.returncode

    def output(self):
        log = open(self.log_path).read() if os.path.exists(self.log_path) else ''
        return log[-4000:]

    def log(self):
        return open(self.log_path).read()

    def queue_depth(self, queue):
        with kombu.Connection(rpc_fixtures.kombu_url(rpc_fixtures.broker_url())) as c:
            return c.default_channel.queue_declare(queue, passive=True).message_count

    def delete_queues(self):
        with kombu.Connection(rpc_fixtures.kombu_url(rpc_fixtures.broker_url())) as c:
            ch = c.default_channel
            for q in (self.topic, '%s.%s' % (self.topic, self.host),
                      '%s_fanout_%s' % (self.topic, self.host), self.topic + '.dead'):
                try:
                    ch.queue_delete(q)
                except Exception:
                    ch = c.channel()


@pytest.fixture
def tmp():
    path = tempfile.mkdtemp(prefix='ca-service-')
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agents(tmp):
    made = []

    def make(**kwargs):
        agent = Agent(tempfile.mkdtemp(dir=tmp), **kwargs)
        made.append(agent)
        return agent
    yield make
    for agent in made:
        agent.stop(signal.SIGKILL)
        agent.delete_queues()


def _instance(name=None, image='img'):
    uuid = str(uuidlib.uuid4())
    return {'uuid': uuid, 'name': name or 'svc-' + uuid[:8], 'image_ref': image,
            'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 0}}


def _state_report(watch, timeout):
    """Args of the next instance_state_changed report, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = watch.get(timeout=max(0.05, deadline - time.monotonic()))
        if event and event[0] == 'instance_state_changed':
            return event[1]
    return None


class NotifySocket:
    def __init__(self, tmp):
        self.path = os.path.join(tmp, 'notify.sock')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.5)
        self.messages = []

    def wait_for(self, key, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for fields in self.messages:
                if key in fields:
                    return fields
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.messages.append(dict(line.split('=', 1)
                                      for line in data.splitlines() if '=' in line))
        raise AssertionError('no %s in %r' % (key, self.messages))


def test_sd_notify_ready_watchdog_stopping(agents, tmp):
    notify = NotifySocket(tmp)
    agent = agents(env={'NOTIFY_SOCKET': notify.path, 'WATCHDOG_USEC': '2000000'})
    agent.start(wait=False)
    ready = notify.wait_for('READY')
    assert ready['READY'] == '1' and 'serving' in ready.get('STATUS', '')
    # Queues are consumed when READY=1 is sent: a call answers at once.
    client = agent.client()
    assert client.ping(timeout=5)['host'] == agent.host
    client.close()
    assert notify.wait_for('WATCHDOG', timeout=5)['WATCHDOG'] == '1'
    assert agent.stop() == 0
    assert notify.wait_for('STOPPING', timeout=5)['STOPPING'] == '1'


def test_sigterm_finishes_in_flight_and_leaves_queued(agents, tmp):
    slow = SlowImageServer(os.path.join(tmp), seconds=3)
    agent = agents(extra={'DEFAULT': {'max_concurrent_builds': '1'},
                          'images': {'image_store_url': slow.url}})
    shutil.copy(os.path.join(agent.store, 'img'), os.path.join(tmp, 'img'))
    agent.start()
    client = agent.client()
    watch = client.open_watch()
    first, second = _instance(), _instance()
    try:
        client.spawn(first, {'id': 'img', 'disk_format': 'qcow2'}, cast=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            report = _state_report(watch, deadline - time.monotonic())
            if report and report['instance_uuid'] == first['uuid'] \
                    and report['event'] == 'spawn.start':
                break
        else:
            raise AssertionError('no spawn.start: ' + agent.output())
        # The second spawn waits for the only worker: queued, not started.
        client.spawn(second, {'id': 'img', 'disk_format': 'qcow2'}, cast=True)
        time.sleep(0.5)
        assert agent.stop() == 0, agent.output()
        events = []
        while True:
            report = _state_report(watch, 3)
            if report is None:
                break
            events.append((report['instance_uuid'], report['event'], report['vm_state']))
    finally:
        watch.close()
        client.close()
        slow.close()
    assert (first['uuid'], 'spawn.end', 'active') in events, events
    assert not [e for e in events if e[0] == second['uuid']], events
    # The finished spawn was acked; the queued one went back to the queue.
    assert agent.queue_depth('%s.%s' % (agent.topic, agent.host)) == 1


def test_no_secrets_in_logs(agents):
    for args in (['--debug'], ['--debug', '--use-json']):
        agent = agents(args=args).start()
        client = agent.client(context={'auth_token': SECRETS[2],
                                       'request_id': 'req-' + agent.suffix})
        inst = _instance()
        try:
            client.spawn(inst, {'id': 'img', 'disk_format': 'qcow2'},
                         admin_password=SECRETS[0])
            client.rescue(inst, rescue_password=SECRETS[1])
            # An invalid request carrying a password: validation errors and
            # dead-lettering must not echo it either.
            with pytest.raises(client_mod.RemoteError):
                client.call('spawn', instance=dict(inst, flavor={}),
                            image_meta={'id': 'img'}, admin_password=SECRETS[0])
            client.cast('spawn', instance='nonsense', admin_password=SECRETS[0])
            client.destroy(inst)
        finally:
            client.close()
        assert agent.stop() == 0
        log = agent.log()
        # Lines about a request carry its request_id and instance uuid...
        assert any('req-' + agent.suffix in line and inst['uuid'] in line
                   for line in log.splitlines())
        for secret in SECRETS:                   # ...no secret ever is
            assert secret not in log, (secret, args)
        assert ':guest@' not in log              # transport_url's password


def test_metrics_scrape(agents):
    port = _free_port()
    agent = agents(extra={'metrics': {'enabled': 'true', 'port': str(port)}}).start()
    client = agent.client()
    inst = _instance()
    try:
        client.ping()
        client.spawn(inst, {'id': 'img', 'disk_format': 'qcow2'})
        with pytest.raises(client_mod.RemoteError):
            client.get_info(str(uuidlib.uuid4()))
        client.cast('no_such_method')
        time.sleep(2)       # the instances gauge is refreshed periodically
        text = urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port,
                                      timeout=10).read().decode()
        healthz = urllib.request.urlopen('http://127.0.0.1:%d/healthz' % port,
                                         timeout=10)
        health = json.loads(healthz.read())
    finally:
        client.destroy(inst)
        client.close()
    assert 'compute_agent_messages_received_total{method="ping"}' in text
    assert 'compute_agent_messages_acked_total{method="spawn"} 1.0' in text
    assert 'compute_agent_messages_rejected_total{method="no_such_method"} 1.0' in text
    assert ('compute_agent_operation_seconds_count{method="spawn",outcome="success"} 1.0'
            in text)
    assert ('compute_agent_operation_seconds_count{method="get_info",'
            'outcome="InstanceNotFound"} 1.0' in text)
    assert 'compute_agent_instances{vm_state="active"} 1.0' in text
    assert 'compute_agent_reconnects_total' in text
    assert 'compute_agent_broker_connected 1.0' in text
    assert 'compute_agent_outbox_depth ' in text
    assert healthz.status == 200 and health['alive'] is True
    assert health['broker'] == 'connected'
    # test:///default answers like libvirtd
    assert health['libvirt'] == 'connected', health
    assert agent.stop() == 0


def test_sighup_reloads_logging(agents):
    agent = agents().start()
    client = agent.client()
    client.ping()
    assert ' DEBUG ' not in agent.log()
    agent.options['DEFAULT']['debug'] = 'true'
    agent.write_conf()
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    client.ping()
    client.close()
    rpc_fixtures.wait_for(lambda: ' DEBUG ' in agent.log(), timeout=10,
                          message='DEBUG lines after SIGHUP')
    assert agent.stop() == 0


def test_bad_config_value_exits_2_naming_the_option(tmp):
    path = os.path.join(tmp, 'bad.conf')
    with open(path, 'w') as f:
        f.write('[libvirt]\nvirt_type = vmware\n')
    proc = subprocess.run([AGENT, '--config-file', path], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert 'virt_type' in proc.stderr


def test_systemd_unit_verifies(tmp):
    """``systemd-analyze verify`` is clean (it checks ExecStart exists): the
    unit as tools/install.sh installs it for this venv's prefix."""
    if shutil.which('systemd-analyze') is None:
        if os.environ.get('CI'):
            pytest.fail('systemd-analyze missing (package systemd)')
        pytest.skip('systemd-analyze missing')
    with open(os.path.join(REPO, 'etc', 'systemd', 'compute-agent.service')) as f:
        text = f.read()
    prefix = os.path.dirname(os.path.dirname(AGENT))
    assert '/opt/compute-agent/bin/compute-agent ' in text
    unit = os.path.join(tmp, 'compute-agent.service')
    with open(unit, 'w') as f:
        f.write(text.replace('/opt/compute-agent', prefix))
    proc = subprocess.run(['systemd-analyze', 'verify', unit],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), \
        proc.stdout + proc.stderr


def test_sample_config_and_unit_are_installed_with_the_project():
    for path in ('etc/compute-agent/compute-agent.conf.sample',
                 'etc/systemd/compute-agent.service'):
        assert os.path.exists(os.path.join(REPO, path)), path
    for script in ('compute-agent', 'compute-agent-ctl', 'compute-agent-render'):
        assert os.path.exists(os.path.join(os.path.dirname(sys.executable), script))


def test_unused_cached_images_are_removed(agents, tmp):
    """The periodic cleanup of a running agent removes a cached image no
    instance uses once it is old enough, and keeps the one a guest runs on."""
    agent = agents(extra={'images': {'image_cache_manager_interval': '1',
                                     'remove_unused_original_minimum_age_seconds': '60'}})
    base = os.path.join(agent.tmp, 'state', 'instances', '_base')
    os.makedirs(base)
    old = time.time() - 2 * 86400
    stale = os.path.join(base, hashlib.sha1(b'gone-image').hexdigest())
    for path in (stale, stale + '.info', stale + '.lock'):
        open(path, 'w').close()
        os.utime(path, (old, old))
    agent.start()
    client = agent.client()
    inst = _instance()
    try:
        client.spawn(inst, {'id': 'img', 'disk_format': 'qcow2'})
        used = os.path.join(base, hashlib.sha1(b'img').hexdigest())
        for path in (used, used + '.info'):
            os.utime(path, (old, old))      # old, but a guest's disk is on it
        rpc_fixtures.wait_for(lambda: not os.path.exists(stale), timeout=30,
                              message='the unused image is removed')
        assert sorted(os.listdir(base)) == sorted(
            os.path.basename(used) + s for s in ('', '.info', '.lock'))
        client.destroy(inst)
        rpc_fixtures.wait_for(lambda: os.listdir(base) == [], timeout=30,
                              message='the image of the destroyed guest is removed')
    finally:
        client.close()
    assert 'Removed cached image %s (?)' % os.path.basename(stale) in agent.log()
    assert 'Removed cached image %s (img)' % os.path.basename(used) in agent.log()
