"""Fixtures of the driver's functional tests: a real libvirtd (qemu:///system),
an image store and instances dir QEMU can read, the driver and one booted guest.

Imported by test modules (fixture scopes are per importing module).
"""

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid

import libvirt    # a hard dependency: missing is an error, never a skip
import pytest
from lxml import etree
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent.vif.base import VifDriver
from compute_agent.vif.loader import VifDrivers
from compute_agent.virt import config as vconfig
from compute_agent.virt import driver as driver_mod
from compute_agent.virt import planner as planner_mod
from compute_agent.virt import xmlbase

try:
    from tests.functional.guest_fixture import (
        BOOT_MARKER, WORK_ROOT, read_console, skip_or_fail)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from guest_fixture import (
        BOOT_MARKER, WORK_ROOT, read_console, skip_or_fail)


URI = 'qemu:///system'
BOOTED = 'BLOCK-DEVICES:'        # last line before the guest may wait on the network
IMAGE_META = {'id': 'test-root', 'disk_format': 'qcow2'}
TIMINGS = {}


def _open_libvirt():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError as e:
        skip_or_fail(f'libvirtd is not reachable at {URI}: {e} (run tools/start-services.sh)')


class Events:
    """Records on_power_event calls; wait() blocks until a matching one."""

    def __init__(self):
        self.cond = threading.Condition()
        self.items = []

    def __call__(self, uuid_, state):
        with self.cond:
            self.items.append((time.monotonic(), uuid_, state))
            self.cond.notify_all()

    def wait(self, uuid_, state, timeout, since=0.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, u, s in self.items:
                    if u == uuid_ and s == state and t >= since:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    mine = [(round(t - since, 1), s) for t, u, s in self.items
                            if u == uuid_]
                    raise AssertionError(f'no power event {state} for {uuid_} in '
                                         f'{timeout}s; got {mine}')
                self.cond.wait(left)


class UserNetDriver(VifDriver):
    """A VIF driver for user-mode NICs (no host devices) that logs plug/unplug."""

    def __init__(self, calls):
        self.calls = calls

    def get_config(self, instance, vif, virt_type):
        return vconfig.Interface(type='user', mac=vif['address'], model='virtio')

    def plug(self, instance, vif):
        self.calls.append(('plug', instance['uuid'], vif['id']))

    def unplug(self, instance, vif):
        self.calls.append(('unplug', instance['uuid'], vif['id']))


class UserNetVifs(VifDrivers):
    """The real VifDrivers, with every VIF type served by UserNetDriver."""

    def __init__(self):
        super().__init__(conf=None)
        self.calls = []
        self.driver = UserNetDriver(self.calls)

    def get(self, vif_type, field='network_info.type'):
        return self.driver


def user_vif():
    return {'id': str(uuid.uuid4()), 'address': 'fa:16:3e:00:00:01', 'type': 'user',
            'devname': 'tapuser', 'network': {'id': 'n', 'bridge': None, 'mtu': 1500,
                                              'subnets': []}, 'details': {}}


@pytest.fixture(scope='module')
def env(test_guest):
    """Image store + instances dir (traversable by libvirt-qemu) + config."""
    probe = _open_libvirt()
    probe.close()
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(WORK_ROOT, 0o755)
    root = tempfile.mkdtemp(prefix='driver-', dir=WORK_ROOT)
    os.chmod(root, 0o755)      # mkdtemp's 0700 would keep QEMU out
    store = os.path.join(root, 'images')
    os.mkdir(store)
    shutil.copyfile(test_guest['kernel'], os.path.join(store, 'test-kernel'))
    shutil.copyfile(test_guest['initrd'], os.path.join(store, 'test-ramdisk'))
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                    os.path.join(store, 'test-root'), '64M'], check=True, timeout=60)
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], default_config_files=[])
    conf.set_override('instances_path', os.path.join(root, 'instances'))
    conf.set_override('image_store_url', 'file://' + store, group='images')
    conf.set_override('virt_type', 'qemu', group='libvirt')
    conf.set_override('connection_uri', URI, group='libvirt')
    conf.set_override('connect_retries', 10, group='libvirt')
    conf.set_override('connect_retry_interval', 0.5, group='libvirt')
    conf.set_override('wait_soft_reboot_seconds', 30, group='libvirt')
    conf.set_override('enabled', True, group='vnc')
    try:
        yield conf
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if TIMINGS:
            print('\ndriver timings: ' + ', '.join(f'{k} {v:.2f}s' for k, v in TIMINGS.items()))


@pytest.fixture(scope='module')
def events():
    return Events()


@pytest.fixture(scope='module')
def driver(env, events):
    drv = driver_mod.LibvirtDriver(env, on_power_event=events)
    yield drv
    drv.close()


@pytest.fixture
def lv():
    """A separate connection: libvirt's own view of the guests."""
    conn = _open_libvirt()
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


def make_instance(prefix, **extra):
    u = str(uuid.uuid4())
    inst = {'uuid': u, 'name': f'{prefix}-{u[:8]}',
            'flavor': {'memory_mb': 128, 'vcpus': 1, 'root_gb': 0},
            'image_ref': 'test-root', 'kernel_id': 'test-kernel',
            'ramdisk_id': 'test-ramdisk', 'config_drive': True, 'metadata': {}}
    inst.update(extra)
    return inst


def spec_of(inst, net=(), image_meta=IMAGE_META):
    """A stored spawn request, as the manager keeps it in the record."""
    return {'instance': inst, 'image_meta': image_meta, 'network_info': list(net),
            'block_device_info': None}


def planner(driver):
    """Plans are made before the driver is called (the manager does this)."""
    return planner_mod.Planner(driver.conf, driver.vif_drivers, driver.image_cache)


def spawn(driver, inst, image_meta=IMAGE_META, net=()):
    return driver.spawn(planner(driver).spawn(inst, image_meta, list(net)))


def reboot(driver, inst, reboot_type):
    return driver.reboot(planner(driver).guest(spec_of(inst)), reboot_type)


def inst_dir(conf, inst):
    return os.path.join(conf.instances_path, inst['name'])


def console_mark(conf, inst):
    """Where the console log ends now. The log is appended to across boots,
    so a wait for the next boot's output looks only after this mark."""
    return len(read_console(os.path.join(inst_dir(conf, inst), 'console.log')))


def wait_console(conf, inst, text, timeout=60, since=0):
    path = os.path.join(inst_dir(conf, inst), 'console.log')
    deadline = time.monotonic() + timeout
    while True:
        log = read_console(path)[since:]
        if text in log:
            return log
        if time.monotonic() >= deadline:
            raise AssertionError(f'{text!r} not on {path} within {timeout}s:\n'
                                 + '\n'.join(log.splitlines()[-30:]))
        time.sleep(0.1)


def first_console_line(conf, inst, timeout=60):
    path = os.path.join(inst_dir(conf, inst), 'console.log')
    deadline = time.monotonic() + timeout
    while not read_console(path).strip():
        assert time.monotonic() < deadline, f'{path} stayed empty'
        time.sleep(0.05)


def state(lv, inst):
    return lv.lookupByUUIDString(inst['uuid']).state()[0]


def no_domain(lv, inst):
    try:
        lv.lookupByUUIDString(inst['uuid'])
    except libvirt.libvirtError as e:
        return e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    return False


def canonical(xml):
    return xmlbase.canonical(etree.fromstring(xml.encode()))


@pytest.fixture(scope='module')
def guest(env, driver):
    """The module's guest, spawned with kernel/ramdisk, qcow2 overlay, config drive."""
    inst = make_instance('ca-drv')
    start = time.monotonic()
    devices = spawn(driver, inst)
    TIMINGS['spawn to RUNNING'] = time.monotonic() - start
    first_console_line(env, inst)
    TIMINGS['spawn to first console line'] = time.monotonic() - start
    wait_console(env, inst, BOOT_MARKER)
    TIMINGS['spawn to boot marker'] = time.monotonic() - start
    wait_console(env, inst, BOOTED)
    yield {'instance': inst, 'devices': devices}
    start = time.monotonic()
    driver.destroy(inst, [], None)
    TIMINGS['destroy'] = time.monotonic() - start
