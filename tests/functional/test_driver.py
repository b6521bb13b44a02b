"""LibvirtDriver against a real libvirtd and QEMU (TCG), with real files.

One guest is spawned per module and carried through pause, suspend, power,
reboot and rescue checks (each test leaves it running and booted); a second
one powers itself off to check lifecycle events, and libvirtd is restarted
under the live driver last. Each state is checked against libvirt's own view
through a separate connection. Needs root, libvirtd (tools/start-services.sh)
and the test guest (tools/build-test-guest.sh); skips otherwise, fails in CI.
"""

import glob
import json
import os
import subprocess
import threading
import time
import uuid

import libvirt    # a hard dependency: missing is an error, never a skip
import pytest
from lxml import etree
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.virt import driver as driver_mod

try:
    from tests.functional.guest_fixture import (  # noqa: F401
        BOOT_MARKER, restart_libvirtd, test_guest)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from guest_fixture import (  # noqa: F401
        BOOT_MARKER, restart_libvirtd, test_guest)

try:
    from tests.functional.driver_fixtures import (  # noqa: F401
        BOOTED, TIMINGS, UserNetVifs, user_vif, env, events, driver, lv, make_instance,
        spec_of, planner, spawn, reboot, inst_dir, console_mark, wait_console, state,
        no_domain, canonical, guest)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from driver_fixtures import (  # noqa: F401
        BOOTED, TIMINGS, UserNetVifs, user_vif, env, events, driver, lv, make_instance,
        spec_of, planner, spawn, reboot, inst_dir, console_mark, wait_console, state,
        no_domain, canonical, guest)


pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


# -- the module guest ---------------------------------------------------------

def test_spawn_boots_with_config_drive(env, driver, guest, lv):
    inst = guest['instance']
    assert guest['devices'] == {'root': 'vda', 'config_drive': 'vdz'}
    log = wait_console(env, inst, f"INSTANCE-UUID: {inst['uuid']}")
    assert BOOT_MARKER in log
    out = driver.get_console_output(inst, 200)
    assert BOOT_MARKER in out and f"INSTANCE-UUID: {inst['uuid']}" in out
    assert driver.get_console_output(inst['uuid'], 2).count('\n') <= 2
    assert 'BLOCK-DEVICES: vda vdb' in log   # vdz is the guest's second disk
    assert state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    assert lv.lookupByUUIDString(inst['uuid']).name() == inst['name']
    assert driver.get_power_state(inst) == 1
    assert driver.list_domains()[inst['uuid']] == 1
    assert driver.exists(inst)
    files = sorted(os.listdir(inst_dir(env, inst)))
    assert files == ['console.log', 'disk', 'disk.config', 'kernel', 'ramdisk'], files

    # Idempotent: the running guest is left alone.
    dom_id = lv.lookupByUUIDString(inst['uuid']).ID()
    assert spawn(driver, inst) == guest['devices']
    assert lv.lookupByUUIDString(inst['uuid']).ID() == dom_id

    vnc = driver.get_vnc_console(inst)
    live = etree.fromstring(lv.lookupByUUIDString(inst['uuid']).XMLDesc(0).encode())
    assert vnc == {'host': env.vnc.server_proxyclient_address,
                   'port': int(live.find('devices/graphics').get('port'))}
    assert vnc['port'] >= 5900


def test_host_stats(driver, guest):
    stats = driver.get_host_stats()
    assert set(stats) == {'hypervisor_type', 'hypervisor_version', 'vcpus', 'vcpus_used',
                          'memory_mb', 'memory_mb_used', 'local_gb', 'local_gb_used',
                          'running_vms'}
    assert stats['hypervisor_type'] == 'QEMU'
    assert stats['hypervisor_version'] > 1000000
    assert stats['vcpus'] >= 1 and stats['vcpus_used'] >= 1
    assert 0 < stats['memory_mb_used'] < stats['memory_mb']
    assert 0 < stats['local_gb_used'] <= stats['local_gb']
    assert stats['running_vms'] >= 1


def test_pause_unpause(driver, guest, lv, events):
    inst = guest['instance']
    since = time.monotonic()
    driver.pause(inst)
    assert state(lv, inst) == libvirt.VIR_DOMAIN_PAUSED
    assert driver.get_power_state(inst) == 3
    driver.pause(inst)                      # repeatable
    events.wait(inst['uuid'], 3, 10, since)
    driver.unpause(inst)
    assert state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    assert driver.get_power_state(inst) == 1
    driver.unpause(inst)


def test_suspend_resume(driver, guest, lv, events):
    inst = guest['instance']
    since = time.monotonic()
    driver.suspend(inst)
    dom = lv.lookupByUUIDString(inst['uuid'])
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert dom.hasManagedSaveImage(0)
    assert driver.get_power_state(inst) == 7
    assert driver.list_domains()[inst['uuid']] == 7
    events.wait(inst['uuid'], 7, 10, since)
    driver.resume(inst)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert not dom.hasManagedSaveImage(0)
    assert driver.get_power_state(inst) == 1


def test_power_off_on(env, driver, guest, lv):
    inst = guest['instance']
    mark = console_mark(env, inst)
    assert driver.power_off(inst, timeout=30) is True      # ACPI: clean
    assert state(lv, inst) == libvirt.VIR_DOMAIN_SHUTOFF
    assert driver.get_power_state(inst) == 4
    assert driver.power_off(inst) is True                   # repeatable
    driver.power_on(inst)
    assert state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    wait_console(env, inst, BOOTED, since=mark)


def test_reboot_soft(env, driver, guest, lv):
    inst = guest['instance']
    mark = console_mark(env, inst)
    start = time.monotonic()
    assert reboot(driver, inst, 'SOFT') == 'SOFT'
    TIMINGS['soft reboot'] = time.monotonic() - start
    assert state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    wait_console(env, inst, BOOTED, since=mark)


def test_reboot_soft_falls_back_to_hard(env, driver, guest, lv, monkeypatch):
    """A guest that ignores ACPI is rebooted hard after wait_soft_reboot_seconds."""
    inst = guest['instance']
    mark = console_mark(env, inst)
    monkeypatch.setattr(libvirt.virDomain, 'shutdownFlags', lambda self, flags=0: 0)
    env.set_override('wait_soft_reboot_seconds', 3, group='libvirt')
    try:
        start = time.monotonic()
        assert reboot(driver, inst, 'SOFT') == 'HARD'
        assert time.monotonic() - start >= 3
    finally:
        env.set_override('wait_soft_reboot_seconds', 30, group='libvirt')
    assert state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    wait_console(env, inst, BOOTED, since=mark)


def test_reboot_hard(env, driver, guest, lv):
    inst = guest['instance']
    before = canonical(lv.lookupByUUIDString(inst['uuid']).XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE))
    old_id = lv.lookupByUUIDString(inst['uuid']).ID()
    mark = console_mark(env, inst)
    assert reboot(driver, inst, 'HARD') == 'HARD'
    dom = lv.lookupByUUIDString(inst['uuid'])
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and dom.ID() != old_id
    # Regenerated by the builder from the same inputs: the same definition.
    assert canonical(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == before
    wait_console(env, inst, BOOTED, since=mark)


def test_rescue_unrescue(env, driver, guest, lv):
    inst = guest['instance']
    d = inst_dir(env, inst)
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    original = lv.lookupByUUIDString(inst['uuid']).XMLDesc(flags)

    mark = console_mark(env, inst)
    plan = planner(driver).rescue(spec_of(inst), rescue_password='s3cret')
    driver.prepare_rescue(plan)
    devices = driver.rescue(plan)
    assert devices['rescue'] == 'vda' and devices['root'] == 'vdb'
    live = lv.lookupByUUIDString(inst['uuid']).XMLDesc(0)
    sources = [(disk.find('target').get('dev'), disk.find('source').get('file'))
               for disk in etree.fromstring(live.encode()).iterfind('devices/disk')]
    assert sources[0] == ('vda', os.path.join(d, 'disk.rescue'))
    assert sources[1] == ('vdb', os.path.join(d, 'disk'))
    assert sources[2][1] == os.path.join(d, 'disk.config.rescue')
    with open(os.path.join(d, 'unrescue.xml')) as f:
        assert canonical(f.read()) == canonical(original)
    log = wait_console(env, inst, 'BLOCK-DEVICES:', since=mark)
    assert 'BLOCK-DEVICES: vda vdb vdc' in log, log
    assert f"INSTANCE-UUID: {inst['uuid']}" in log
    assert driver.get_power_state(inst) == 1
    assert sorted(glob.glob(os.path.join(d, '*.rescue'))) == [
        os.path.join(d, n) for n in ('disk.config.rescue', 'disk.rescue',
                                     'kernel.rescue', 'ramdisk.rescue')]

    mark = console_mark(env, inst)
    driver.unrescue(inst)
    dom = lv.lookupByUUIDString(inst['uuid'])
    assert canonical(dom.XMLDesc(flags)) == canonical(original)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert not glob.glob(os.path.join(d, '*.rescue'))
    assert not os.path.exists(os.path.join(d, 'unrescue.xml'))
    log = wait_console(env, inst, 'BLOCK-DEVICES:', since=mark)
    assert 'BLOCK-DEVICES: vda vdb\n' in log, log
    with pytest.raises(exception.InstanceInvalidState):
        driver.unrescue(inst)


# -- other guests and failures ---------------------------------------------------

def test_self_poweroff_event_then_destroy(env, events, lv):
    inst = make_instance('ca-drv-off', metadata={'poweroff': '1'})
    vifs, net = UserNetVifs(), [user_vif()]
    driver = driver_mod.LibvirtDriver(env, on_power_event=events, vif_drivers=vifs)
    try:
        spawn(driver, inst, net=net)
        assert vifs.calls == [('plug', inst['uuid'], net[0]['id'])]
        wait_console(env, inst, 'POWERING-OFF', timeout=90)
        seen = time.monotonic()
        t = events.wait(inst['uuid'], 4, 30, since=seen - 5)
        TIMINGS['POWERING-OFF to power event'] = max(0.0, t - seen)
        assert state(lv, inst) == libvirt.VIR_DOMAIN_SHUTOFF
        assert driver.get_power_state(inst) == 4
    finally:
        start = time.monotonic()
        driver.destroy(inst, net, None)
        TIMINGS['destroy (shut off guest)'] = time.monotonic() - start
    assert vifs.calls[-1] == ('unplug', inst['uuid'], net[0]['id'])
    assert no_domain(lv, inst)
    assert not os.path.exists(inst_dir(env, inst))
    assert driver.get_power_state(inst) == 0
    assert inst['uuid'] not in driver.list_domains()
    driver.destroy(inst, net, None)                 # repeatable
    with pytest.raises(exception.InstanceNotFound):
        driver.power_on(inst)
    driver.close()


def test_qcow2_ephemeral_and_swap_boot(env, driver, lv):
    """use_cow_images (the default): ephemeral and swap disks are qcow2
    overlays on blank bases cached in _base, which QEMU opens and the guest
    sees as disks."""
    inst = make_instance('ca-drv-local', config_drive=False,
                         flavor={'memory_mb': 128, 'vcpus': 1, 'root_gb': 0,
                                 'ephemeral_gb': 1, 'swap': 16})
    try:
        assert spawn(driver, inst) == {'root': 'vda', 'ephemeral': 'vdb',
                                       'swap': 'vdc'}
        log = wait_console(env, inst, BOOTED)
        assert 'BLOCK-DEVICES: vda vdb vdc' in log, log
        base = os.path.join(os.path.realpath(env.instances_path), '_base')
        for name, blank in (('disk.local', 'ephemeral_%d' % (1 << 30)),
                            ('disk.swap', 'swap_%d' % (16 << 20))):
            info = json.loads(subprocess.run(
                ['qemu-img', 'info', '-U', '--output=json',
                 os.path.join(inst_dir(env, inst), name)],
                check=True, capture_output=True, text=True).stdout)
            assert info['format'] == 'qcow2', info
            assert os.path.dirname(info['backing-filename']) == base
            assert os.path.basename(info['backing-filename']).startswith(blank)
        assert state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    finally:
        driver.destroy(inst, [], None)
    assert not os.path.exists(inst_dir(env, inst))


def test_spawn_missing_image_rolls_back(env, driver, lv):
    inst = make_instance('ca-drv-noimg', image_ref='no-such-image')
    with pytest.raises(exception.ImageNotFound):
        spawn(driver, inst, {'id': 'no-such-image', 'disk_format': 'qcow2'})
    assert no_domain(lv, inst)
    assert not os.path.exists(inst_dir(env, inst))


def test_spawn_start_failure_rolls_back(env, lv, monkeypatch):
    """A failure after define: domain undefined, VIFs unplugged, files gone."""
    inst = make_instance('ca-drv-nostart')
    vifs, net = UserNetVifs(), [user_vif()]
    driver = driver_mod.LibvirtDriver(env, vif_drivers=vifs)

    def fail(self):
        raise RuntimeError('injected start failure')
    monkeypatch.setattr(libvirt.virDomain, 'create', fail)
    with pytest.raises(RuntimeError, match='injected'):
        spawn(driver, inst, net=net)
    assert no_domain(lv, inst)
    assert not os.path.exists(inst_dir(env, inst))
    assert vifs.calls == [('plug', inst['uuid'], net[0]['id']),
                          ('unplug', inst['uuid'], net[0]['id'])]
    driver.close()


def test_unreachable_libvirtd_raises_hypervisor_unavailable(env, monkeypatch):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], default_config_files=[])
    conf.set_override('instances_path', env.instances_path)
    conf.set_override('connection_uri', 'qemu+unix:///system?socket=/nonexistent/sock',
                      group='libvirt')
    conf.set_override('connect_retries', 3, group='libvirt')
    conf.set_override('connect_retry_interval', 0.05, group='libvirt')
    drv = driver_mod.LibvirtDriver(conf)
    opened = []
    real_open = libvirt.open
    monkeypatch.setattr(libvirt, 'open', lambda uri: opened.append(uri) or real_open(uri))
    with pytest.raises(exception.HypervisorUnavailable):
        drv.get_power_state(str(uuid.uuid4()))
    assert len(opened) == 3      # connect_retries attempts, then it gives up
    drv.close()


# -- libvirtd restart (last: it disturbs every other libvirt client) -------------

def _wait_reconnects(connection, more_than, timeout=30):
    deadline = time.monotonic() + timeout
    while connection.reconnects <= more_than:
        assert time.monotonic() < deadline, 'the driver did not reconnect by itself'
        time.sleep(0.05)


def _on_every_pooled_connection(connection, fn):
    """Run ``fn(conn)`` in as many concurrent calls as the pool has
    connections, all parked until each has started, so every pooled
    connection serves one; returns their results and the connections."""
    size = len(connection._slots)
    arrived = threading.Barrier(size, timeout=30)
    out, errors = [], []

    def parked(conn):
        arrived.wait()
        return fn(conn), conn

    def call():
        try:
            out.append(connection.call(parked))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=call) for _ in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len({id(c) for _r, c in out}) == size
    return out


def test_libvirtd_restart_under_live_driver(driver, guest, events, monkeypatch):
    inst, connection = guest['instance'], driver.connection
    assert driver.get_power_state(inst) == 1
    assert len(connection._slots) > 1      # the default pool
    _on_every_pooled_connection(connection, lambda c: c.getLibVersion())

    # 1. libvirtd restarts while the agent is idle: the close callback makes
    # it reconnect without any call, and events flow again.
    reconnects = connection.reconnects
    start = time.monotonic()
    restart_libvirtd()
    TIMINGS['libvirtd restart'] = time.monotonic() - start
    _wait_reconnects(connection, reconnects)
    TIMINGS['libvirtd restart to reconnected'] = time.monotonic() - start
    since = time.monotonic()
    driver.pause(inst)
    events.wait(inst['uuid'], 3, 10, since)
    driver.unpause(inst)
    events.wait(inst['uuid'], 1, 10, since)
    # The other pooled connections died too; each is reopened on its next use.
    for found, _conn in _on_every_pooled_connection(
            connection, lambda c: c.lookupByUUIDString(inst['uuid']).isActive()):
        assert found == 1

    # 2. A call on a connection that died unnoticed fails with a connection
    # error and is re-run once on a new connection. (The background reopen
    # is off and the liveness check lies once, so the call hits the corpse.)
    monkeypatch.setattr(connection, '_reopen_after_close', lambda reason: None)
    lies = iter([True])
    real_alive = connection._alive
    monkeypatch.setattr(connection, '_alive', lambda c: next(lies, None) or real_alive(c))
    reconnects = connection.reconnects
    restart_libvirtd()
    assert driver.get_power_state(inst) == 1
    assert next(lies, 'used') == 'used'
    assert connection.reconnects == reconnects + 1
