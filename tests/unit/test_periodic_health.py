"""Periodic tasks, the liveness check behind the watchdog, /healthz.

The server, driver and journal here are TEST DOUBLES (attributes only):
these tests are about the decision logic; tests/functional/test_service.py
and test_systemd.py run the real agent.
"""

import json
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import pytest

from compute_agent import health as health_mod
from compute_agent import metrics as metrics_mod
from compute_agent import periodic
from compute_agent import systemd


def wait_for(predicate, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    raise AssertionError('condition not met within %ss' % timeout)


# -- periodic.Runner --------------------------------------------------------------------

def test_interval_zero_disables_a_task_entirely():
    runner = periodic.Runner()
    assert runner.add('off', 0, lambda: None) is None
    assert runner.add('none', None, lambda: None) is None
    runner.start()
    try:
        assert runner.tasks == {}
        assert not [t for t in threading.enumerate()
                    if t.name.startswith('periodic-')]
    finally:
        runner.stop()


def test_a_stuck_task_does_not_delay_the_others():
    runner = periodic.Runner()
    release = threading.Event()
    fast_runs = []
    stuck = runner.add('stuck', 0.01, lambda: release.wait(30))
    runner.add('fast', 0.01, lambda: fast_runs.append(1))
    runner.start()
    try:
        wait_for(lambda: len(fast_runs) >= 20)
        assert stuck.runs == 0          # still inside its first run
        assert runner.dead() == []
    finally:
        release.set()
        runner.stop()


def test_a_failing_task_keeps_running_and_is_counted():
    runner = periodic.Runner()
    task = runner.add('boom', 0.01, lambda: 1 / 0)
    runner.start()
    try:
        wait_for(lambda: task.failures >= 3)
        assert runner.dead() == []
    finally:
        runner.stop()


def test_run_immediately_false_waits_one_interval():
    runner = periodic.Runner()
    task = runner.add('late', 3600, lambda: None, run_immediately=False)
    runner.start()
    try:
        time.sleep(0.05)
        assert task.runs == 0 and task.thread.is_alive()
    finally:
        runner.stop()
    assert not task.thread.is_alive()


# -- health.Health ------------------------------------------------------------------------

class FakeServer:
    def __init__(self):
        self.connected = True
        self.problem = None
        self.broker = types.SimpleNamespace(url=types.SimpleNamespace(
            hosts=[types.SimpleNamespace(hostname='rabbit1', port=5672)]))

    def liveness_problem(self):
        return self.problem


class FakeDriver:
    def __init__(self):
        self.ok = True
        self.gate = None
        self.conf = types.SimpleNamespace(libvirt=types.SimpleNamespace(
            connection_uri='qemu:///system', virt_type='qemu'))

    def healthy(self):
        if self.gate is not None:
            self.gate.wait(30)
        return self.ok


class FakeJournal:
    def outbox_count(self):
        return 3

    def list_instances(self):
        return [{'vm_state': 'active'}]


class RecordingNotifier(systemd.Notifier):
    def __init__(self):
        super().__init__(address='')
        self.sent = []

    def notify(self, **fields):
        self.sent.append(fields)
        return True


def make_health():
    server, driver, sd = FakeServer(), FakeDriver(), RecordingNotifier()
    runner = periodic.Runner()
    h = health_mod.Health(server, driver, FakeJournal(), runner, sd,
                          'compute.node1')
    return h, server, driver, sd


def test_broker_outage_is_alive_and_says_what_it_waits_for():
    h, server, driver, sd = make_health()
    h.probe()
    h.watchdog()
    assert {'WATCHDOG': 1} in sd.sent
    assert {'STATUS': 'serving compute.node1; 3 messages in the outbox'} in sd.sent
    sd.sent.clear()
    server.connected = False
    driver.ok = False
    h.probe()
    h.watchdog()
    assert {'WATCHDOG': 1} in sd.sent      # an outage is no reason to restart
    assert {'STATUS': 'waiting for the broker (rabbit1:5672); waiting for '
                      'libvirt (qemu:///system); 3 messages in the outbox'} in sd.sent
    snap = h.snapshot()
    assert snap == {'alive': True, 'problems': [], 'broker': 'waiting',
                    'libvirt': 'unreachable', 'outbox_depth': 3}
    # The same STATUS is not sent again and again.
    n = len([f for f in sd.sent if 'STATUS' in f])
    h.watchdog()
    assert len([f for f in sd.sent if 'STATUS' in f]) == n


def test_a_stuck_consume_loop_withholds_the_watchdog():
    h, server, _driver, sd = make_health()
    server.problem = 'consume loop stuck for 31s'
    h.watchdog()
    assert {'WATCHDOG': 1} not in sd.sent
    assert {'STATUS': 'not alive: consume loop stuck for 31s'} in sd.sent
    assert h.snapshot()['alive'] is False


@pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_a_dead_periodic_task_withholds_the_watchdog():
    h, _server, _driver, sd = make_health()
    h.runner.add('dies', 3600, lambda: (_ for _ in ()).throw(SystemExit()))
    h.runner.start()
    try:
        wait_for(lambda: h.runner.dead() == ['dies'])
        h.watchdog()
        assert {'WATCHDOG': 1} not in sd.sent
        assert h.snapshot()['problems'] == ['periodic tasks died: dies']
    finally:
        h.runner.stop()


def test_a_hung_libvirt_probe_does_not_block_the_watchdog():
    h, _server, driver, sd = make_health()
    driver.gate = threading.Event()
    h.runner.add('probe', 0.01, h.probe)
    h.runner.add('watchdog', 0.01, h.watchdog)
    h.runner.start()
    try:
        wait_for(lambda: sd.sent.count({'WATCHDOG': 1}) >= 10)
        assert h.snapshot()['libvirt'] == 'unknown'
    finally:
        driver.gate.set()
        h.runner.stop()


# -- the HTTP endpoint ------------------------------------------------------------------

def test_healthz_beside_metrics():
    m = metrics_mod.Metrics()
    state = {'alive': True, 'broker': 'connected'}
    port = m.serve('127.0.0.1', 0, health=lambda: dict(state))
    base = 'http://127.0.0.1:%d' % port
    try:
        m.broker_connected.set(1)
        m.outbox_depth.set(7)
        reply = urllib.request.urlopen(base + '/healthz', timeout=10)
        assert reply.status == 200
        assert json.loads(reply.read()) == state
        state['alive'] = False
        try:
            urllib.request.urlopen(base + '/healthz', timeout=10)
            raise AssertionError('no 503')
        except urllib.error.HTTPError as e:
            assert e.code == 503 and json.loads(e.read())['alive'] is False
        text = urllib.request.urlopen(base + '/metrics', timeout=10).read().decode()
        assert 'compute_agent_broker_connected 1.0' in text
        assert 'compute_agent_outbox_depth 7.0' in text
        assert 'compute_agent_libvirt_connected 0.0' in text
    finally:
        m.stop()
    with socket.socket() as s:       # the listener is closed
        assert s.connect_ex(('127.0.0.1', port)) != 0


def test_metrics_listen_on_loopback_by_default():
    from oslo_config import cfg

    from compute_agent import conf as agent_conf
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], default_config_files=[])
    assert conf.metrics.listen_address == '127.0.0.1'


def test_the_agent_loads_prometheus_client_only_when_metrics_are_kept():
    """With [metrics] disabled (the default) no value can be read, so the
    agent's METRICS keeps none and prometheus_client stays unloaded
    (bench/scale.py: ~1.3 MB); enable() keeps them from then on."""
    code = '''
import sys
from compute_agent import service  # noqa: F401 - what the agent imports
from compute_agent import metrics
assert 'prometheus_client' not in sys.modules, 'loaded at import'
m = metrics.METRICS
assert not m.enabled and m.registry is None
metrics.labelled(m.received, 'ping').inc()
m.latency.labels('spawn', 'success').observe(0.1)
m.set_instance_counts({'active': 1})
assert 'prometheus_client' not in sys.modules, 'loaded by counting'
m.enable()
metrics.labelled(m.received, 'ping').inc()
text = m.render()
assert 'compute_agent_messages_received_total{method="ping"} 1.0' in text, text
print('ok')
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr
