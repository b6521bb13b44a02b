"""The unit from etc/systemd, installed as README.rst says, under a REAL systemd.

systemd runs as PID 1 of its own PID and mount namespaces (NOTES.md, "Real
systemd"): tmpfs on /tmp, /var/tmp, /run (and /var/log/journal) inside, so
it never touches the machine's; a private directory bind-mounted over
/etc/systemd/system, so it sees only the unit under test (plus masks of the
boot services that would write to the shared file system or kernel
settings); ``--unit=basic.target``, so it starts nothing else. It shares the
network namespace: the agent reaches a PRIVATE RabbitMQ node (stopped for
the outage test; the shared broker is never touched) and a slow HTTP image
server of this test. The hypervisor is ``test:///default`` (in-process:
these tests are about the service, not guests).

README's "Running in production" block is run line by line: ``tools/install.sh``
with a temporary PREFIX, CA_CONF_DIR and CA_UNIT_DIR; the editor line is
this test writing the config; the ``systemctl`` lines run inside.

The tests of this module run in order on one booted systemd and one agent.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from compute_agent.rpc import client as client_mod
from tests.functional import rabbit_node
from tests.functional.test_service import SlowImageServer
from tests.unit.test_packaging import literal_blocks

REPO = Path(__file__).resolve().parents[2]
WORK_ROOT = Path('/var/lib/compute-agent-test')   # not /tmp: hidden inside
UNIT = 'compute-agent'
WATCHDOG_SEC = 4
# Boot services that would write to the machine's file system or kernel
# settings (shared with this namespace): masked in the private unit dir.
MASKED = ('systemd-sysctl.service', 'systemd-sysusers.service',
          'systemd-tmpfiles-setup.service', 'systemd-tmpfiles-setup-dev.service',
          'systemd-tmpfiles-clean.timer', 'systemd-tmpfiles-clean.service',
          'systemd-update-utmp.service', 'systemd-remount-fs.service',
          'systemd-modules-load.service', 'systemd-journal-flush.service',
          'systemd-random-seed.service', 'systemd-binfmt.service',
          'systemd-firstboot.service', 'systemd-hwdb-update.service',
          'ldconfig.service', 'systemd-machine-id-commit.service')


def wait_for(predicate, timeout, message, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %ss waiting for %s'
                                 % (timeout, message))
        time.sleep(interval)


class SystemdBox:
    """systemd as PID 1 of new PID and mount namespaces."""

    def __init__(self, root, units):
        self.root = root
        for name in MASKED:
            os.symlink('/dev/null', units / name)
        boot = root / 'boot.sh'
        boot.write_text(
            '#!/bin/sh\nset -e\n'
            'mount -t tmpfs t /tmp\nmount -t tmpfs t /var/tmp\n'
            'mount -t tmpfs t /run\n'
            'if [ -d /var/log/journal ]; then mount -t tmpfs t /var/log/journal; fi\n'
            'mount --bind %s /etc/systemd/system\n'
            'exec /usr/lib/systemd/systemd --system --unit=basic.target\n' % units)
        boot.chmod(0o755)
        with open(root / 'systemd.log', 'wb') as log:
            self.unshare = subprocess.Popen(
                ['unshare', '--pid', '--mount', '--fork', '--mount-proc',
                 '--propagation', 'private', str(boot)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.pid = wait_for(self._child, 20, 'systemd to be forked')
        wait_for(lambda: self.run('systemctl', 'is-system-running',
                                  check=False).stdout.strip()
                 in ('running', 'degraded'), 60, 'systemd to boot')

    def _child(self):
        assert self.unshare.poll() is None, (self.root / 'systemd.log').read_text()
        path = '/proc/%d/task/%d/children' % (self.unshare.pid, self.unshare.pid)
        try:
            children = open(path).read().split()
        except OSError:
            return None
        if not children:
            return None
        exe = os.readlink('/proc/%s/exe' % children[0])
        return int(children[0]) if exe.endswith('/systemd') else None

    def run(self, *cmd, check=True, timeout=120):
        """A command inside (its PIDs are the namespace's)."""
        proc = subprocess.run(['nsenter', '-t', str(self.pid), '-m', '-p'] + list(cmd),
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError('%s: exit %d\n%s%s' % (' '.join(cmd), proc.returncode,
                                                       proc.stdout, proc.stderr))
        return proc

    def show(self, prop):
        return self.run('systemctl', 'show', '-p', prop, '--value', UNIT).stdout.strip()

    def journal(self):
        return self.run('journalctl', '--no-pager', '-u', UNIT).stdout

    def close(self):
        try:
            os.kill(self.pid, signal.SIGKILL)   # the namespace's PID 1: all go
        except (OSError, TypeError):
            pass
        try:
            os.killpg(self.unshare.pid, signal.SIGKILL)
        except OSError:
            pass
        self.unshare.wait(30)


def _require():
    missing = [what for what, ok in (
        ('root', os.geteuid() == 0),
        ('/usr/lib/systemd/systemd', os.path.exists('/usr/lib/systemd/systemd')),
        ('unshare/nsenter', shutil.which('unshare') and shutil.which('nsenter')),
        ('rabbitmq-server', rabbit_node.available())) if not ok]
    if missing:
        msg = 'the real-systemd test needs: %s' % ', '.join(missing)
        if os.environ.get('CI'):
            pytest.fail(msg)
        pytest.skip(msg)


class Deployment:
    """README's production install in a temp root, run under SystemdBox."""

    def __init__(self, root, broker, images):
        self.root, self.broker, self.images = root, broker, images
        self.suffix = uuidlib.uuid4().hex[:8]
        self.host = 'sysd-' + self.suffix
        self.topic = 'compute-sysd-' + self.suffix
        self.state_topic = 'sched-sysd-' + self.suffix
        self.prefix = root / 'opt'
        self.conf_dir = root / 'etc'
        self.units = root / 'units'
        self.log = root / 'agent.log'
        self.box = None
        self.made_dirs = [d for d in ('/var/lib/compute-agent', '/var/log/compute-agent')
                          if not os.path.exists(d)]

    def readme_commands(self):
        [block] = literal_blocks('Running in production')
        return block

    def install(self):
        """Every line of README's block, in order; systemctl ones inside."""
        for line in self.readme_commands():
            words = line.split()
            if words == ['tools/install.sh']:
                subprocess.run([str(REPO / 'tools' / 'install.sh'), str(self.prefix)],
                               cwd=REPO, check=True, timeout=600,
                               env=dict(os.environ, CA_CONF_DIR=str(self.conf_dir),
                                        CA_UNIT_DIR=str(self.units)),
                               stdout=subprocess.DEVNULL)
                self.add_test_dropin()
                self.box = SystemdBox(self.root, self.units)
            elif words[0] == 'editor':
                assert words[1] == '/etc/compute-agent/compute-agent.conf'
                self.write_config()
            elif words[0] == 'systemctl':
                self.box.run(*words)
            else:
                raise AssertionError('README line this test cannot run: %r' % line)

    def add_test_dropin(self):
        dropin = self.units / (UNIT + '.service.d')
        dropin.mkdir()
        # Short watchdog and restart delay so the test is quick; no core
        # file of the aborted agent; a frozen agent is killed soon after.
        (dropin / 'test.conf').write_text(
            '[Service]\nWatchdogSec=%d\nRestartSec=1\nTimeoutAbortSec=5\n'
            'LimitCORE=0\n' % WATCHDOG_SEC)

    def write_config(self):
        path = self.conf_dir / 'compute-agent.conf'
        sample = path.read_text()
        assert '[DEFAULT]' in sample        # the installed sample, now edited
        path.write_text(
            '[DEFAULT]\nhost = %s\nstate_path = %s\ntransport_url = %s\n'
            'report_interval = 1\nsync_power_state_interval = 1\n'
            'graceful_shutdown_timeout = 30\ndebug = true\nlog_file = %s\n'
            '[rpc]\ntopic = %s\nstate_topic = %s\nreconnect_interval = 0.2\n'
            'reconnect_interval_max = 1\n'
            '[libvirt]\nvirt_type = qemu\nconnection_uri = test:///default\n'
            '[images]\nimage_store_url = %s\n[vnc]\nenabled = false\n' % (
                self.host, self.root / 'state', self.broker.url, self.log,
                self.topic, self.state_topic, self.images.url))

    def client(self):
        return client_mod.AgentClient(self.broker.url, self.host, topic=self.topic,
                                      state_topic=self.state_topic, timeout=30)

    def ping(self, timeout=2):
        try:
            with self.client() as c:
                return c.ping(timeout=timeout)
        except Exception:  # noqa: BLE001 - not yet
            return None

    def agent_log(self):
        return self.log.read_text(errors='replace') if self.log.exists() else ''

    def close(self):
        if self.box is not None:
            self.box.close()
        for d in self.made_dirs:       # StateDirectory=/LogsDirectory= made them
            try:
                os.rmdir(d)
            except OSError:
                pass


@pytest.fixture(scope='module')
def deployed():
    _require()
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix='systemd-', dir=WORK_ROOT))
    store = root / 'images'
    store.mkdir()
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(store / 'img'), '16M'],
                   check=True, timeout=60)
    images = SlowImageServer(str(store), seconds=0)
    broker = rabbit_node.PrivateBroker().start()
    dep = Deployment(root, broker, images)
    dep.store = store
    try:
        dep.install()
        yield dep
    finally:
        dep.close()
        broker.destroy()
        images.close()
        keep = os.environ.get('CA_E2E_KEEP_LOGS')
        if keep and dep.log.exists():
            os.makedirs(keep, exist_ok=True)
            shutil.copy(dep.log, os.path.join(keep, root.name + '.agent.log'))
        shutil.rmtree(root, ignore_errors=True)


def test_starts_and_reaches_active(deployed):
    box = deployed.box
    assert box.show('ActiveState') == 'active', deployed.agent_log()[-3000:]
    assert box.show('UnitFileState') == 'enabled'
    assert box.show('FragmentPath') == '/etc/systemd/system/compute-agent.service'
    exec_start = box.show('ExecStart')
    assert str(deployed.prefix / 'bin' / 'compute-agent') in exec_start
    assert box.show('WatchdogUSec') == '%ds' % WATCHDOG_SEC
    assert box.show('StatusText') == 'serving %s.%s' % (deployed.topic, deployed.host)
    assert wait_for(deployed.ping, 30, 'ping')['host'] == deployed.host
    # The agent execs itself once, glibc's per-thread malloc caches off
    # (memory.py): the pid systemd watches (NotifyAccess=main, so its
    # readiness came from that pid) is the one serving, tuned.
    environ = box.run('cat', '/proc/%s/environ' % box.show('MainPID'))
    assert 'GLIBC_TUNABLES=glibc.malloc.tcache_count=0' in \
        environ.stdout.split('\0')


def test_reload_sends_sighup_and_keeps_the_process(deployed):
    box = deployed.box
    pid = box.show('MainPID')
    before = deployed.agent_log().count('SIGHUP: reloading')
    box.run('systemctl', 'reload', UNIT)
    wait_for(lambda: deployed.agent_log().count('SIGHUP: reloading') > before,
             20, 'the agent to log the SIGHUP')
    assert box.show('MainPID') == pid and box.show('ActiveState') == 'active'
    assert deployed.ping(timeout=10)


def test_broker_outage_is_waited_out_without_restart(deployed):
    box = deployed.box
    pid = box.show('MainPID')
    assert box.show('NRestarts') == '0'
    deployed.broker.stop()
    down_since = time.monotonic()
    try:
        wait_for(lambda: box.show('StatusText').startswith(
            'waiting for the broker (localhost:%d)' % deployed.broker.port),
            30, 'STATUS= saying it waits for the broker')
        # At least two watchdog periods without a broker: still the same
        # process, never restarted.
        while time.monotonic() < down_since + 2 * WATCHDOG_SEC + 2:
            assert box.show('MainPID') == pid
            assert box.show('ActiveState') == 'active'
            time.sleep(1)
    finally:
        deployed.broker.start()
    assert wait_for(lambda: deployed.ping(timeout=5), 90, 'ping after the outage')
    assert box.show('MainPID') == pid and box.show('NRestarts') == '0'
    wait_for(lambda: box.show('StatusText').startswith('serving '), 30,
             'STATUS= serving again')
    assert 'status: waiting for the broker' in deployed.agent_log()
    assert 'Watchdog timeout' not in box.journal()


def test_watchdog_kills_and_restarts_a_frozen_agent(deployed):
    box = deployed.box
    pid = box.show('MainPID')
    restarts = int(box.show('NRestarts'))
    box.run('kill', '-STOP', pid)
    wait_for(lambda: box.show('MainPID') not in (pid, '0')
             and box.show('ActiveState') == 'active', 60,
             'a new agent process')
    assert int(box.show('NRestarts')) == restarts + 1
    assert 'Watchdog timeout' in box.journal()
    assert wait_for(lambda: deployed.ping(timeout=5), 60, 'ping from the new agent')


def test_stop_lets_an_in_flight_spawn_finish(deployed):
    box = deployed.box
    image = 'slow-' + deployed.suffix   # not cached yet: downloaded slowly
    shutil.copy(deployed.store / 'img', deployed.store / image)
    deployed.images.seconds = 4
    uuid = str(uuidlib.uuid4())
    inst = {'uuid': uuid, 'name': 'sysd-' + uuid[:8], 'image_ref': image,
            'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 0}}
    with deployed.client() as client:
        watch = client.open_watch(uuid)
        try:
            client.spawn(inst, {'id': image, 'disk_format': 'qcow2'}, cast=True)
            events = []

            def saw(event):
                item = watch.get(timeout=1)
                if item and item[0] == 'instance_state_changed':
                    events.append((item[1]['event'], item[1]['vm_state']))
                return (event, 'building' if event == 'spawn.start'
                        else 'active') in events
            wait_for(lambda: saw('spawn.start'), 30, 'spawn.start')
            box.run('systemctl', 'stop', UNIT)       # returns once it exited
            assert box.show('ActiveState') == 'inactive'
            assert box.show('Result') == 'success'
            assert box.show('ExecMainStatus') == '0'
            wait_for(lambda: saw('spawn.end'), 10, 'spawn.end reported')
        finally:
            watch.stop()
    log = deployed.agent_log()
    assert 'Stopped consuming; waiting up to' in log
    assert 'unfinished at stop' not in log
    # Finished, recorded and acknowledged: nothing left in its queue.
    queues = deployed.broker.list_queues()
    assert queues['%s.%s' % (deployed.topic, deployed.host)] == '0', queues
