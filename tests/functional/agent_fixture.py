"""End-to-end fixture: the REAL agent as a subprocess, driven over RabbitMQ.

Import the fixtures into a test module::

    from agent_fixture import agent, test_guest  # noqa: F401

``agent`` (module scope) is an :class:`AgentEnv`: it writes a config
(unique ``host``, ``[rpc] topic``, ``state_topic``, control exchange and
``[ovs] integration_bridge`` per module, ``virt_type=qemu``, report and
power-sync intervals of 2 s), an image store holding ``test-kernel``,
``test-ramdisk`` (the test guest of guest_fixture.py) and ``test-root`` (an
empty 64M qcow2), starts ``.venv/bin/compute-agent --config-file ...
--log-file ...`` and waits until it answers ``ping``. Everything lives in
one directory under ``/var/lib/compute-agent-test`` whose every level is
0755 (QEMU runs as libvirt-qemu and must traverse it).

It offers an :class:`~compute_agent.rpc.client.AgentClient` (``.client``),
a collector of every state report (``.reports``, bound to the state topic
before the agent starts), and helpers: ``spawn``, ``wait_state``,
``console``, ``wait_console``, ``stop``/``kill``/``start`` of the agent.

At teardown the agent gets SIGTERM and must exit 0; every domain, tap,
bridge, broker object and directory the module created is removed.

Outside CI (env ``CI`` unset) the tests skip when RabbitMQ or libvirtd is
unreachable (or not root); with ``CI`` set they fail instead. Set
``CA_E2E_KEEP_LOGS=<dir>`` to keep a copy of each agent's log there.
"""

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import types
import uuid as uuidlib
from pathlib import Path

import pytest

from compute_agent.states import READ_ONLY

try:
    from tests.functional.guest_fixture import (  # noqa: F401
        BOOT_MARKER, REPO_ROOT, WORK_ROOT, skip_or_fail, test_guest)
    from tests.functional.rpc_fixtures import (
        broker_reachable, broker_url, kombu_url)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from guest_fixture import (  # noqa: F401
        BOOT_MARKER, REPO_ROOT, WORK_ROOT, skip_or_fail, test_guest)
    from rpc_fixtures import broker_reachable, broker_url, kombu_url

try:
    from tests.functional.agent_messages import Reports, new_request_id
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_messages import Reports, new_request_id

LIBVIRT_URI = 'qemu:///system'
AGENT_BIN = REPO_ROOT / '.venv' / 'bin' / 'compute-agent'
IMAGE_META = {'id': 'test-root', 'disk_format': 'qcow2'}
READY_TIMEOUT = 60
CALL_TIMEOUT = 90


# -- checks --------------------------------------------------------------------

def require_services(url):
    """Skip (fail in CI) unless root, RabbitMQ and libvirtd are usable."""
    if os.geteuid() != 0:
        skip_or_fail('the end-to-end tests need root (libvirt, taps, OVS)')
    if not AGENT_BIN.exists():
        skip_or_fail(f'{AGENT_BIN} is missing (pip install -e . into .venv)')
    if not broker_reachable(url):
        skip_or_fail(f'RabbitMQ is not reachable at {url} (run tools/start-services.sh)')
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        libvirt.open(LIBVIRT_URI).close()
    except libvirt.libvirtError as exc:
        skip_or_fail(f'libvirtd is not reachable at {LIBVIRT_URI}: {exc} '
                     '(run tools/start-services.sh)')


def open_libvirt(uri=LIBVIRT_URI):
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open(uri)


def no_domain(lv, uuid):
    """True when libvirt connection ``lv`` has no domain with this uuid."""
    import libvirt
    try:
        lv.lookupByUUIDString(uuid)
    except libvirt.libvirtError as e:
        return e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    return False


def wait_until(predicate, timeout, message, interval=0.1):
    """Poll ``predicate`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f'timed out after {timeout}s waiting for {message}')
        time.sleep(interval)


def tree_snapshot(root, exclude=()):
    """{relative path: (type, size)} of everything under root (no symlink
    following), except the subtrees in ``exclude`` (absolute paths)."""
    root = str(root)
    exclude = tuple(os.path.realpath(e) for e in exclude)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if os.path.realpath(os.path.join(dirpath, d)) not in exclude]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            kind = 'd' if os.path.isdir(path) and not os.path.islink(path) else 'f'
            out[os.path.relpath(path, root)] = (kind, 0 if kind == 'd' else st.st_size)
    return out


# -- the agent --------------------------------------------------------------------

class AgentEnv:
    """One real agent process, its directories, config and broker names."""

    def __init__(self, test_guest, label='e2e', url=None, env=None, peer=None,
                 command_prefix=()):
        """``env``: the agent's environment (None: this process's).
        ``peer``: another AgentEnv of the same cloud (its topic, exchange and
        state topic are shared; it owns them). ``command_prefix``: run the
        agent through it (e.g. ``ip netns exec NS``)."""
        from compute_agent.rpc.client import AgentClient

        self.url = url or broker_url()
        self.tag = secrets.token_hex(3)                  # 6 hex chars
        self.label = label
        self.env = env
        self.host = f'e2e-{label}-{self.tag}'
        self.topic = f'compute-e2e-{self.tag}'
        self.state_topic = f'sched-e2e-{self.tag}'
        self.exchange = f'e2e-ex-{self.tag}'
        self.peer = peer
        if peer is not None:
            self.topic, self.state_topic, self.exchange = (
                peer.topic, peer.state_topic, peer.exchange)
        self.command_prefix = list(command_prefix)
        self.base_config = {}    # sections over the defaults, under extras
        self.libvirt_uri = LIBVIRT_URI
        self.ovs_bridge = f'cabr{secrets.token_hex(2)}'  # unique integration bridge
        self.name_prefix = f'ca{self.tag}-'
        self.proc = None
        self.restarts = 0
        self.instances = {}      # uuid -> instance dict, everything spawned
        self.links = []          # host devices to remove at the end
        self.ovs_bridges = [self.ovs_bridge]
        self._names = 0
        self._rpc_lock = threading.RLock()

        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        os.chmod(WORK_ROOT, 0o755)
        self.root = Path(tempfile.mkdtemp(prefix=f'e2e-{label}-', dir=WORK_ROOT))
        self.state_path = self.root / 'state'
        self.instances_path = self.state_path / 'instances'
        self.images = self.root / 'images'
        for d in (self.root, self.state_path, self.instances_path, self.images):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)       # mkdtemp's 0700 would keep QEMU out
        shutil.copyfile(test_guest['kernel'], self.images / 'test-kernel')
        shutil.copyfile(test_guest['initrd'], self.images / 'test-ramdisk')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        str(self.images / 'test-root'), '64M'], check=True, timeout=60)
        for f in self.images.iterdir():
            os.chmod(f, 0o644)
        self.config_file = self.root / 'agent.conf'
        self.log_file = self.root / 'agent.log'
        self.write_config()

        self.client = AgentClient(self.url, self.host, topic=self.topic,
                                  exchange=self.exchange, timeout=CALL_TIMEOUT,
                                  state_topic=self.state_topic)
        self.reports = Reports(self.client)

    # -- config and process ---------------------------------------------------

    def write_config(self, **extra_sections):
        sections = {
            'DEFAULT': {
                'host': self.host,
                'state_path': self.state_path,
                'instances_path': self.instances_path,
                'transport_url': self.url,
                'control_exchange': self.exchange,
                'report_interval': 2,
                'sync_power_state_interval': 2,
                'graceful_shutdown_timeout': 20,
                'max_concurrent_builds': 4,
                'debug': 'true',
            },
            'rpc': {'topic': self.topic, 'state_topic': self.state_topic,
                    'reconnect_interval': 0.2, 'reconnect_interval_max': 2},
            'libvirt': {'virt_type': 'qemu', 'connection_uri': LIBVIRT_URI,
                        'wait_soft_reboot_seconds': 30, 'connect_retries': 30,
                        'connect_retry_interval': 0.5},
            'images': {'image_store_url': f'file://{self.images}'},
            'vnc': {'enabled': 'true', 'server_listen': '127.0.0.1'},
            'ovs': {'integration_bridge': self.ovs_bridge, 'datapath_type': 'netdev',
                    'ovs_vsctl_timeout': 30},
        }
        for section, values in list(self.base_config.items()) + list(
                extra_sections.items()):
            sections.setdefault(section, {}).update(values)
        text = ''.join(f'[{s}]\n' + ''.join(f'{k} = {v}\n' for k, v in opts.items()) + '\n'
                       for s, opts in sections.items())
        self.config_file.write_text(text)

    def start(self, timeout=READY_TIMEOUT):
        """Start the agent and wait until it answers ping."""
        from compute_agent.rpc import client as client_mod

        assert self.proc is None or self.proc.poll() is not None, 'already running'
        with open(self.log_file, 'ab') as log:
            log.write(b'\n==== test: starting the agent ====\n')
            self.proc = subprocess.Popen(
                self.command_prefix + [str(AGENT_BIN), '--config-file', str(self.config_file),
                 '--log-file', str(self.log_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(self.root), env=self.env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f'the agent exited with {self.proc.returncode} '
                                     f'at start:\n{self.log_tail()}')
            try:
                with self._rpc_lock:
                    pong = self.client.ping(timeout=2)
                assert pong['host'] == self.host
                return pong
            except (client_mod.Timeout, client_mod.Unroutable):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f'the agent did not answer ping within {timeout}s:\n'
                                     f'{self.log_tail()}')
            time.sleep(0.2)

    def restart(self):
        self.stop()
        self.restarts += 1
        return self.start()

    def stop(self, timeout=60):
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def kill(self):
        """SIGKILL: no cleanup at all, as a crash or power cut would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines=60):
        try:
            return '\n'.join(self.log_file.read_text(errors='replace').splitlines()[-lines:])
        except FileNotFoundError:
            return '(no log)'

    # -- RPC ------------------------------------------------------------------------

    def call(self, method, request_id=None, rpc_timeout=CALL_TIMEOUT, **args):
        """A call; RemoteError on a failure reply.

        ``power_off`` goes through ``AgentClient.power_off`` (its RPC arg
        ``timeout`` must not be confused with the client's own)."""
        with self._rpc_lock:
            self.client.context = {'request_id': request_id or new_request_id()}
            try:
                if method == 'power_off':
                    return self.client.power_off(args.pop('instance'),
                                                 timeout_s=args.pop('timeout', 60),
                                                 timeout=rpc_timeout, **args)
                return self.client.call(method, timeout=rpc_timeout, **args)
            finally:
                if method not in READ_ONLY:   # no report can trail a query's reply
                    self.reports.sync(self.client)

    def cast(self, method, request_id=None, **args):
        with self._rpc_lock:
            self.client.context = {'request_id': request_id or new_request_id()}
            return self.client.cast(method, **args)

    def get_info(self, uuid):
        return self.call('get_info', instance_uuid=uuid)

    # -- instances ------------------------------------------------------------------

    def new_name(self, label='vm'):
        self._names += 1
        return f'{self.name_prefix}{label}-{self._names}'

    def make_instance(self, label='vm', metadata=None, **extra):
        uuid = str(uuidlib.uuid4())
        name = self.new_name(label)
        inst = {'uuid': uuid, 'name': name, 'hostname': name,
                'flavor': {'memory_mb': 128, 'vcpus': 1, 'root_gb': 0},
                'image_ref': 'test-root', 'kernel_id': 'test-kernel',
                'ramdisk_id': 'test-ramdisk', 'config_drive': True,
                'metadata': dict(metadata or {})}
        inst.update(extra)
        return inst

    def spawn(self, instance=None, image_meta=None, network_info=None, cast=False,
              request_id=None, timeout=CALL_TIMEOUT, label='vm', metadata=None,
              block_device_info=None):
        """Spawn (a call unless ``cast``); returns (instance, record or unique id).

        The instance is tracked for the teardown's cleanup either way.
        """
        inst = instance or self.make_instance(label, metadata)
        if isinstance(inst.get('uuid'), str):
            self.instances[inst['uuid']] = inst
        args = dict(instance=inst, image_meta=image_meta or dict(IMAGE_META),
                    network_info=network_info or [], block_device_info=block_device_info,
                    admin_password=None, injected_files=[])
        if cast:
            return inst, self.cast('spawn', request_id=request_id, **args)
        return inst, self.call('spawn', request_id=request_id, rpc_timeout=timeout, **args)

    def destroy(self, inst, network_info=None, **kw):
        return self.call('destroy', instance={'uuid': inst['uuid']},
                         network_info=network_info or [], block_device_info=None,
                         cleanup=True, **kw)

    def instance_dir(self, inst):
        return self.instances_path / inst['name']

    def wait_state(self, uuid, vm_state, task_state=None, timeout=60, since=0,
                   power_state=None):
        """The first report (after ``since``) with that vm_state/task_state
        (and power_state, if given)."""
        def match(r):
            return (r['_method'] == 'instance_state_changed'
                    and r.get('instance_uuid') == uuid
                    and r.get('vm_state') == vm_state
                    and r.get('task_state') == task_state
                    and (power_state is None or r.get('power_state') == power_state))
        return self.reports.wait(match, timeout,
                                 f'{uuid} {vm_state}/{task_state}/{power_state}', since)

    def console(self, uuid, tail_lines=1000):
        """The console output through RPC (get_console_output)."""
        return self.call('get_console_output', instance_uuid=uuid,
                         tail_lines=tail_lines, rpc_timeout=20)

    def console_mark(self, uuid):
        """Where the console ends now. The log is appended to across boots,
        so a wait for the next boot's output looks after this mark."""
        return len(self.console(uuid, tail_lines=10000))

    def wait_console(self, uuid, text, timeout=60, interval=0.3, since=None):
        """Poll get_console_output until it contains ``text`` (after the
        mark ``since``, if given); return that output."""
        deadline = time.monotonic() + timeout
        while True:
            if since is None:
                out = self.console(uuid)
            else:
                out = self.console(uuid, tail_lines=10000)[since:]
            if text in out:
                return out
            if time.monotonic() >= deadline:
                tail = '\n'.join(out.splitlines()[-30:])
                raise AssertionError(f'{text!r} not on the console of {uuid} within '
                                     f'{timeout}s; last lines:\n{tail}')
            time.sleep(interval)

    # -- host devices -----------------------------------------------------------------

    def track_link(self, name):
        """Remove this tap/bridge at teardown (if it still exists)."""
        self.links.append(name)
        return name

    def fresh_link(self, prefix):
        from compute_agent.vif import netdev
        for _ in range(50):
            name = prefix + secrets.token_hex(2)
            if not netdev.link_exists(name) and name not in self.links:
                return self.track_link(name)
        raise RuntimeError('no free device name')

    # -- teardown ---------------------------------------------------------------------

    def teardown(self):
        """Stop the agent (SIGTERM, must exit 0) and remove everything."""
        problems = []
        if self.alive():
            for uuid in list(self.instances):
                try:
                    self.call("destroy", instance={"uuid": uuid}, rpc_timeout=30)
                except Exception:  # noqa: BLE001 - already gone, or it failed
                    pass
        rc = self.stop() if self.alive() else 'not running'
        if rc != 0:
            problems.append(f'the agent exited with {rc} on SIGTERM (expected 0):\n'
                            f'{self.log_tail()}')
        try:
            self.reports.stop()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
        self._clean_domains()
        self._clean_devices()
        self._clean_broker()
        keep = os.environ.get('CA_E2E_KEEP_LOGS')
        if keep:        # a copy of the agent's log for a post-mortem
            os.makedirs(keep, exist_ok=True)
            shutil.copy(self.log_file, os.path.join(keep, f'{self.root.name}.agent.log'))
        shutil.rmtree(self.root, ignore_errors=True)
        return problems

    def _clean_domains(self):
        import libvirt
        try:
            conn = open_libvirt(self.libvirt_uri)
        except libvirt.libvirtError:
            return
        try:
            doms = []
            for dom in conn.listAllDomains(0):
                if dom.name().startswith(self.name_prefix) or dom.UUIDString() in self.instances:
                    doms.append(dom)
            for dom in doms:
                try:
                    if dom.isActive():
                        dom.destroy()
                except libvirt.libvirtError:
                    pass
                try:
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                      | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                except libvirt.libvirtError:
                    pass
        finally:
            conn.close()

    def _clean_devices(self):
        from compute_agent.vif import netdev
        for br in self.ovs_bridges:
            subprocess.run(['ovs-vsctl', '--timeout=30', '--if-exists', 'del-br', br],
                           check=False, timeout=60, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        for name in self.links:
            try:        # only the kinds the tests make; never anything else
                netdev.delete_link(name, kinds=('tun', 'bridge'))
            except netdev.NetdevError:
                pass

    def _clean_broker(self):
        import kombu

        from compute_agent.rpc import topology
        names = types.SimpleNamespace(
            control_exchange=self.exchange, host=self.host,
            rpc=types.SimpleNamespace(topic=self.topic))
        try:
            with kombu.Connection(kombu_url(self.url), connect_timeout=3) as c:
                ch = c.channel()
                topology.delete(ch, names)
                if self.peer is None:   # the peer's, not ours to remove
                    ch.exchange_delete(self.exchange)
        except Exception:  # noqa: BLE001 - best effort
            pass


def run_agent(test_guest, label, prepare=None):
    """For a module fixture (``yield from``): an AgentEnv, ``prepare(env)``
    (config, environment) before it starts; at the end it is torn down and
    must have left nothing behind."""
    url = broker_url()
    require_services(url)
    env = AgentEnv(test_guest, label=label, url=url)
    try:
        if prepare is not None:
            prepare(env)
        env.start()
    except BaseException:
        print(env.log_tail())
        env.teardown()
        raise
    yield env
    problems = env.teardown()
    assert not problems, '\n'.join(problems)


@pytest.fixture(scope='module')
def agent(request, test_guest):
    """The module's running agent (an AgentEnv)."""
    label = request.module.__name__.rsplit('.', 1)[-1].replace('test_e2e_', '')[:10]
    label = ''.join(c for c in label if c.isalnum()) or 'e2e'
    yield from run_agent(test_guest, label)
