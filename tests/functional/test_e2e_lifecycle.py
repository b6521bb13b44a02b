"""End to end: the real agent process, driven over RabbitMQ like a scheduler.

One guest (kernel/ramdisk boot, qcow2 root overlay, config drive, a bridge
VIF) is spawned for the module and carried through rescue and every power
operation, then destroyed; a second one powers itself off; bad requests
must fail cleanly; the agent is SIGKILLed in the middle of a spawn and
restarted; libvirtd is restarted under the running agent (last: it
disturbs every libvirt client on the host).

Every state is checked three ways: the call's reply, the state reports on
the state topic, and libvirt's own view (a separate connection).
Needs root, RabbitMQ, libvirtd and OVS (tools/start-services.sh) and the
test guest; skips otherwise, fails when CI is set.
"""

import glob
import json
import os
import secrets
import shutil
import subprocess
import time

import kombu
import libvirt    # a hard dependency: missing is an error, never a skip
import pytest
from lxml import etree
from pyroute2 import IPRoute

from compute_agent.rpc.client import RemoteError
from compute_agent.virt import xmlbase

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        IMAGE_META, WORK_ROOT, agent, kombu_url, open_libvirt, no_domain,
        skip_or_fail, test_guest, tree_snapshot, wait_until)
    from tests.functional.agent_messages import new_request_id
    from tests.functional.guest_fixture import restart_libvirtd
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_fixture import (  # noqa: F401
        IMAGE_META, WORK_ROOT, agent, kombu_url, open_libvirt, no_domain,
        skip_or_fail, test_guest, tree_snapshot, wait_until)
    from agent_messages import new_request_id
    from guest_fixture import restart_libvirtd


pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(300)]

BOOTED = 'COMPUTE-AGENT-TEST-GUEST BOOTED'
READY = '\nREADY'                  # the guest handles ACPI from here on
SECURE_INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
FILES = ['console.log', 'disk', 'disk.config', 'kernel', 'ramdisk']


# -- helpers ---------------------------------------------------------------------

@pytest.fixture
def lv():
    """libvirt's own view of the guests, through a separate connection
    (per test: test 7 restarts libvirtd, which closes connections)."""
    conn = open_libvirt()
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


def dom_of(lv, inst):
    return lv.lookupByUUIDString(inst['uuid'])


def lv_state(lv, inst):
    return dom_of(lv, inst).state()[0]


def canonical(xml):
    return xmlbase.canonical(etree.fromstring(xml.encode()))


def disks_of(xml):
    """[(target dev, source file)] of the domain XML's disks, in order."""
    root = etree.fromstring(xml.encode())
    return [(d.find('target').get('dev'), d.find('source').get('file'))
            for d in root.iterfind('devices/disk')]


def random_mac():
    return 'fa:16:3e:%02x:%02x:%02x' % tuple(secrets.token_bytes(3))


def link_index(name):
    with IPRoute() as ipr:
        links = ipr.get_links(ifname=name)
        return links[0]['index'] if links else None


def assert_record(rec, vm_state, power_state, task_state=None):
    assert (rec['vm_state'], rec['task_state'], rec['power_state']) == (
        vm_state, task_state, power_state), rec


def check_op(agent, inst, method, task, vm_state, power_state, **args):
    """Call ``method``; check the reply, the start/end reports and get_info."""
    since = agent.reports.mark()
    rid = new_request_id()
    rec = agent.call(method, request_id=rid, instance={'uuid': inst['uuid']}, **args)
    assert_record(rec, vm_state, power_state)
    agent.reports.wait(lambda r: r.get('event') == method + '.end'
                       and r.get('instance_uuid') == inst['uuid'], 20,
                       method + '.end', since)
    mine = [(r['event'], r['vm_state'], r['task_state'], r['power_state'])
            for r in agent.reports.states(inst['uuid'], since)
            if r.get('request_id') == rid]
    assert mine[0][:3] == (method + '.start', mine[0][1], task), mine
    assert mine[-1] == (method + '.end', vm_state, None, power_state), mine
    assert_record(agent.get_info(inst['uuid']), vm_state, power_state)
    return rec


def dead_letters(agent):
    with kombu.Connection(kombu_url(agent.url)) as c:
        return c.channel().queue_declare(agent.topic + '.dead', passive=True).message_count


# -- the module's guest -------------------------------------------------------------

@pytest.fixture(scope='module')
def bridge(agent):
    """A Linux bridge name nobody uses (the agent creates it on plug)."""
    return agent.fresh_link('cabr')


@pytest.fixture(scope='module')
def guest(agent, bridge):
    """Spawned through RPC (a call): kernel/ramdisk, qcow2 overlay, config
    drive, one bridge VIF. Tests share it; test_destroy removes it."""
    vif = {'id': 'port-' + secrets.token_hex(4), 'address': random_mac(),
           'type': 'bridge', 'devname': agent.fresh_link('tapca'),
           'network': {'id': 'net-1', 'bridge': bridge, 'label': 'e2e', 'mtu': 1500,
                       'subnets': []},
           'details': {}}
    inst = agent.make_instance('life')
    rid = new_request_id()
    since = agent.reports.mark()
    start = time.monotonic()
    inst, rec = agent.spawn(inst, network_info=[vif], request_id=rid)
    return {'instance': inst, 'record': rec, 'request_id': rid, 'since': since,
            'vif': vif, 'spawn_s': time.monotonic() - start}


# -- 1. spawn -----------------------------------------------------------------------

def test_spawn_boots_and_reports_in_order(agent, guest, lv):
    inst, rec, rid = guest['instance'], guest['record'], guest['request_id']
    uuid = inst['uuid']
    assert_record(rec, 'active', 1)
    assert rec['uuid'] == uuid and rec['name'] == inst['name'] and rec['host'] == agent.host
    assert rec['devices']['root'] == 'vda' and 'config_drive' in rec['devices'], rec
    assert rec['error'] is None
    assert rec['vnc'] and rec['vnc']['port'] >= 5900, rec

    # The console log on disk: the boot marker and the uuid from the config drive.
    console_log = agent.instance_dir(inst) / 'console.log'
    wait_until(lambda: f'INSTANCE-UUID: {uuid}' in console_log.read_text(errors='replace'),
               60, 'INSTANCE-UUID on console.log')
    log = console_log.read_text(errors='replace')
    assert BOOTED in log
    # ... and through RPC.
    out = agent.wait_console(uuid, 'BLOCK-DEVICES:')
    assert BOOTED in out and f'INSTANCE-UUID: {uuid}' in out
    assert agent.console(uuid, tail_lines=2).count('\n') <= 2

    # libvirt: running, named after the instance, qcow2 overlay on _base, config drive.
    dom = dom_of(lv, inst)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and dom.name() == inst['name']
    d = agent.instance_dir(inst)
    info = json.loads(subprocess.run(
        ['qemu-img', 'info', '-U', '--output=json', str(d / 'disk')],
        capture_output=True, text=True, check=True, timeout=30).stdout)
    assert info['format'] == 'qcow2'
    assert os.path.dirname(info['backing-filename']) == str(agent.instances_path / '_base')
    sources = [s for _t, s in disks_of(dom.XMLDesc(0))]
    assert sources[0] == str(d / 'disk') and str(d / 'disk.config') in sources
    assert sorted(os.listdir(d)) == FILES

    # Reports: building/spawning then active/None/1, in sequence order, all
    # carrying the request's request_id (also as context).
    agent.reports.wait(lambda r: r.get('event') == 'spawn.end'
                       and r.get('instance_uuid') == uuid, 20, 'spawn.end', guest['since'])
    reports = agent.reports.states(uuid, guest['since'])
    assert [(r['event'], r['vm_state'], r['task_state'], r['power_state'])
            for r in reports] == [('spawn.start', 'building', 'spawning', 0),
                                  ('spawn.end', 'active', None, 1)], reports
    seqs = [r['sequence'] for r in reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    for r in reports:
        assert r['request_id'] == rid and r['_context'].get('request_id') == rid
        assert r['host'] == agent.host and r['error'] is None and r['timestamp']

    # Host reports every report_interval (2 s).
    agent.reports.wait(lambda r: r['_method'] == 'host_state_update'
                       and r.get('running_vms', 0) >= 1, 10, 'host_state_update')

    # Spawning it again is a success that changes nothing.
    dom_id = dom.ID()
    again = agent.call('spawn', instance=inst, image_meta=IMAGE_META,
                       network_info=[guest['vif']])
    assert_record(again, 'active', 1)
    assert dom_of(lv, inst).ID() == dom_id


# -- 2. rescue ------------------------------------------------------------------------

def test_rescue_and_unrescue(agent, guest, lv):
    inst = guest['instance']
    d = agent.instance_dir(inst)
    before = canonical(dom_of(lv, inst).XMLDesc(SECURE_INACTIVE))

    mark = agent.console_mark(inst['uuid'])
    check_op(agent, inst, 'rescue', 'rescuing', 'rescued', 1)
    live = dom_of(lv, inst).XMLDesc(0)
    disks = disks_of(live)
    assert disks[0][1] == str(d / 'disk.rescue'), disks
    assert disks[1][1] == str(d / 'disk'), disks
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    out = agent.wait_console(inst['uuid'], 'BLOCK-DEVICES:', since=mark)
    assert BOOTED in out
    block = [line for line in out.splitlines() if line.startswith('BLOCK-DEVICES:')][-1]
    assert len(block.split()[1:]) >= 2, block       # rescue disk + the original
    assert glob.glob(str(d / '*.rescue'))

    mark = agent.console_mark(inst['uuid'])
    check_op(agent, inst, 'unrescue', 'unrescuing', 'active', 1)
    assert canonical(dom_of(lv, inst).XMLDesc(SECURE_INACTIVE)) == before
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    assert not glob.glob(str(d / '*.rescue')), os.listdir(d)
    assert not glob.glob(str(d / '*.part')) and not glob.glob(str(d / '.*'))
    assert sorted(os.listdir(d)) == FILES
    out = agent.wait_console(inst['uuid'], f"INSTANCE-UUID: {inst['uuid']}",
                             since=mark)
    assert BOOTED in out


# -- 3. power operations ------------------------------------------------------------------

def test_power_operations(agent, guest, lv):
    inst = guest['instance']
    uuid = inst['uuid']

    # SOFT: an ACPI shutdown the guest honours (only once it is READY), then a start.
    agent.wait_console(uuid, READY)
    old_id = dom_of(lv, inst).ID()
    mark = agent.console_mark(uuid)
    check_op(agent, inst, 'reboot', 'rebooting', 'active', 1, reboot_type='SOFT')
    # The guest honoured the ACPI shutdown: no fallback to a hard reboot.
    assert '%s ignored the ACPI shutdown' % uuid not in agent.log_file.read_text()
    assert dom_of(lv, inst).ID() != old_id
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    assert 'ignored the ACPI shutdown' not in agent.log_file.read_text(errors='replace')

    agent.wait_console(uuid, READY, since=mark)
    old_id = dom_of(lv, inst).ID()
    mark = agent.console_mark(uuid)
    check_op(agent, inst, 'reboot', 'rebooting_hard', 'active', 1, reboot_type='HARD')
    assert dom_of(lv, inst).ID() != old_id
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING

    agent.wait_console(uuid, READY, since=mark)
    check_op(agent, inst, 'power_off', 'powering-off', 'stopped', 4, timeout=30)
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_SHUTOFF
    mark = agent.console_mark(uuid)
    check_op(agent, inst, 'power_on', 'powering-on', 'active', 1)
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING

    check_op(agent, inst, 'pause', 'pausing', 'paused', 3)
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_PAUSED
    check_op(agent, inst, 'unpause', 'unpausing', 'active', 1)
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING

    agent.wait_console(uuid, 'BLOCK-DEVICES:', since=mark)
    check_op(agent, inst, 'suspend', 'suspending', 'suspended', 7)
    dom = dom_of(lv, inst)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0)
    check_op(agent, inst, 'resume', 'resuming', 'active', 1)
    dom = dom_of(lv, inst)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and not dom.hasManagedSaveImage(0)

    # An operation that makes no sense now is refused, and changes nothing.
    with pytest.raises(RemoteError) as ei:
        agent.call('unpause', instance={'uuid': uuid})
    assert ei.value.exc_type == 'InstanceInvalidState'
    assert ei.value.module == 'compute_agent.exception'
    assert_record(agent.get_info(uuid), 'active', 1)

    # Two power-sync periods later the record still matches libvirt.
    time.sleep(4.5)
    assert_record(agent.get_info(uuid), 'active', 1)
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING


# -- 4. a guest that powers itself off ---------------------------------------------------

def test_self_poweroff_is_reported_without_a_request(agent, lv):
    since = agent.reports.mark()
    inst, rec = agent.spawn(label='off', metadata={'poweroff': '1'})
    assert_record(rec, 'active', 1)
    agent.wait_console(inst['uuid'], 'POWERING-OFF', timeout=60)
    report = agent.wait_state(inst['uuid'], 'stopped', None, timeout=30, since=since,
                              power_state=4)
    assert report['event'] in ('power.lifecycle', 'power.sync'), report
    assert report['request_id'] is None and report['error'] is None, report
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_SHUTOFF
    assert_record(agent.get_info(inst['uuid']), 'stopped', 4)
    # It can be started again by request.
    check_op(agent, inst, 'power_on', 'powering-on', 'active', 1)
    agent.destroy(inst)
    assert no_domain(lv, inst['uuid'])


# -- 5. destroy ------------------------------------------------------------------------

def test_destroy_leaves_nothing(agent, guest, bridge, lv):
    inst, tap = guest['instance'], guest['vif']['devname']
    assert link_index(tap) is not None      # the guest's tap, on the bridge
    since = agent.reports.mark()
    rec = agent.destroy(inst, network_info=[guest['vif']])
    assert_record(rec, 'deleted', 0)
    assert no_domain(lv, inst['uuid'])
    assert not agent.instance_dir(inst).exists()
    assert link_index(tap) is None
    assert link_index(bridge) is not None   # shared: left in place
    with pytest.raises(RemoteError) as ei:
        agent.get_info(inst['uuid'])
    assert ei.value.exc_type == 'InstanceNotFound'
    assert inst['uuid'] not in [r['uuid'] for r in agent.call('list_instances')]
    agent.reports.wait(lambda r: r.get('event') == 'destroy.end', 10, 'destroy.end', since)
    assert [(r['event'], r['vm_state'], r['task_state'], r['power_state'])
            for r in agent.reports.states(inst['uuid'], since)] == [
        ('destroy.start', 'active', 'deleting', 1), ('destroy.end', 'deleted', None, 0)]


# -- 6. bad requests -------------------------------------------------------------------

BAD_SPAWNS = {
    # case: (instance changes, image_meta, error class, field named in the message)
    'checksum': ({}, dict(IMAGE_META, checksum='0' * 32), 'ImageChecksumMismatch', None),
    'missing': ({'image_ref': 'no-such-image'}, {'id': 'no-such-image', 'disk_format': 'qcow2'},
                'ImageNotFound', None),
    'scheme': ({}, dict(IMAGE_META, location='ftp://example.com/test-root'),
               'InvalidRequest', 'image_meta.location'),
    'name': ({'name': '../x'}, IMAGE_META, 'InvalidRequest', 'instance.name'),
}


def _outside_snapshot(agent):
    snap = {k: v[0] for k, v in tree_snapshot(agent.root, exclude=[agent.instances_path]).items()}
    images = tree_snapshot(agent.images)
    top = set(os.listdir(agent.instances_path)) - {'_base'}
    return snap, images, top


@pytest.mark.parametrize('case', sorted(BAD_SPAWNS))
def test_bad_spawn_fails_cleanly(agent, lv, case):
    changes, image_meta, cls, field = BAD_SPAWNS[case]
    before = _outside_snapshot(agent)
    dead_before = dead_letters(agent)
    invalid = cls == 'InvalidRequest'

    # As a call: a failure reply naming the class.
    inst = agent.make_instance('bad' + case, **changes)
    with pytest.raises(RemoteError) as ei:
        agent.spawn(inst, image_meta=image_meta)
    assert ei.value.exc_type == cls, ei.value
    assert ei.value.module == 'compute_agent.exception'
    if field:
        assert field in ei.value.value, ei.value.value

    # As a cast: an error report (and an invalid cast is dead-lettered).
    inst2 = agent.make_instance('bad' + case, **changes)
    since = agent.reports.mark()
    agent.spawn(inst2, image_meta=image_meta, cast=True)
    report = agent.wait_state(inst2['uuid'], 'error', None, timeout=30, since=since)
    assert report['event'] == 'spawn.error' and report['error']['class'] == cls, report
    if field:
        assert field in report['error']['message'], report
    if invalid:
        wait_until(lambda: dead_letters(agent) == dead_before + 1, 10, 'a dead letter')

    for i in (inst, inst2):
        assert no_domain(lv, i['uuid'])
        if invalid:     # an invalid spawn creates nothing at all
            with pytest.raises(RemoteError) as ei:
                agent.get_info(i['uuid'])
            assert ei.value.exc_type == 'InstanceNotFound'
        else:           # a failed one is recorded as error, and can be deleted
            rec = agent.get_info(i['uuid'])
            assert rec['vm_state'] == 'error' and rec['error']['class'] == cls, rec
            agent.destroy(i)
    after = _outside_snapshot(agent)
    assert after == before
    base = agent.instances_path / '_base'
    assert not [f for f in os.listdir(base) if f.endswith('.part')] if base.exists() else True
    for where in (agent.state_path, agent.root, WORK_ROOT):
        assert not (where / 'x').exists()


# -- 7. crash in the middle of a spawn; libvirtd restart ----------------------------------

def _strays(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith('.part') or f.startswith('.'))


@pytest.mark.parametrize('when', ['spawn.start', 'download'])
def test_sigkill_during_spawn_then_restart(agent, lv, when):
    """SIGKILL the agent mid-spawn (a cast) and start it again.

    ``spawn.start``: killed the moment the spawn.start report arrives.
    ``download``: killed while the spawn downloads an image into _base (the
    image is a FIFO nobody writes to, so the download is certain to be in
    progress); the real image is put in place before the restart.
    """
    image_id = f'kill-kernel-{secrets.token_hex(2)}'
    image = agent.images / image_id
    if when == 'download':
        os.mkfifo(image, 0o644)
    else:
        shutil.copyfile(agent.images / 'test-kernel', image)
        os.chmod(image, 0o644)
    inst = agent.make_instance('kill', kernel_id=image_id)
    rid = new_request_id()
    since = agent.reports.mark()
    agent.spawn(inst, cast=True, request_id=rid)
    agent.wait_state(inst['uuid'], 'building', 'spawning', timeout=30, since=since)
    base = agent.instances_path / '_base'
    if when == 'download':
        wait_until(lambda: base.exists() and any(f.endswith('.part') for f in os.listdir(base)),
                   30, 'the image download to start')
    agent.kill()
    if when == 'download':
        image.unlink()
        shutil.copyfile(agent.images / 'test-kernel', image)
        os.chmod(image, 0o644)

    restart = agent.reports.mark()
    agent.start()
    # The unacknowledged spawn is redelivered and settled: active, or error
    # with a reason.
    rec = wait_until(lambda: (lambda r: r if r['task_state'] is None
                              and r['vm_state'] in ('active', 'error') else None)(
        agent.get_info(inst['uuid'])), 60, 'the spawn to settle after the restart')
    if rec['vm_state'] == 'error':
        assert rec['error'] and rec['error']['class'] and rec['error']['message'], rec
    # A repeated spawn (queued behind the redelivered one) ends active.
    _inst, rec = agent.spawn(inst)
    assert_record(rec, 'active', 1)
    # Reports and replies travel through different queues: the reply may
    # overtake the report published before it.
    agent.reports.wait(lambda r: r['_method'] == 'instance_state_changed'
                       and r.get('instance_uuid') == inst['uuid']
                       and r.get('vm_state') == 'active', 30,
                       'the active report', since=restart)
    reports = agent.reports.states(inst['uuid'], restart)
    assert reports and reports[-1]['vm_state'] == 'active', reports
    # Reports are at-least-once: one unconfirmed before the kill may come
    # again, but one sequence number never names two different reports.
    by_seq = {}
    for r in agent.reports.states(inst['uuid'], since):
        by_seq.setdefault(r['sequence'], []).append(r)
    for seq, same in by_seq.items():
        assert all(r == same[0] for r in same), (seq, same)
    for r in agent.reports.states(inst['uuid'], since):
        if r['event'].startswith('spawn.'):
            assert r['request_id'] == rid, r

    same_name = [d for d in lv.listAllDomains(0) if d.name() == inst['name']]
    assert len(same_name) == 1 and same_name[0].UUIDString() == inst['uuid']
    assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
    assert sorted(os.listdir(agent.instance_dir(inst))) == FILES
    assert not _strays(base), f'temp files left in _base: {_strays(base)}'
    agent.wait_console(inst['uuid'], f"INSTANCE-UUID: {inst['uuid']}")
    rec = agent.destroy(inst)
    assert_record(rec, 'deleted', 0)
    assert no_domain(lv, inst['uuid']) and not agent.instance_dir(inst).exists()
    assert not _strays(base)


def test_libvirtd_restart_under_running_agent(agent):
    """libvirtd restarts under the running agent: the next operations work
    (last in the module: it disturbs every libvirt client on the host)."""
    inst, rec = agent.spawn(label='lvrestart')
    assert_record(rec, 'active', 1)
    agent.wait_console(inst['uuid'], 'BLOCK-DEVICES:')
    restart_libvirtd()
    lv = open_libvirt()
    try:
        check_op(agent, inst, 'pause', 'pausing', 'paused', 3)
        assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_PAUSED
        check_op(agent, inst, 'unpause', 'unpausing', 'active', 1)
        check_op(agent, inst, 'reboot', 'rebooting_hard', 'active', 1, reboot_type='HARD')
        assert lv_state(lv, inst) == libvirt.VIR_DOMAIN_RUNNING
        agent.wait_console(inst['uuid'], BOOTED)
        # Lifecycle events flow again: a change made behind the agent's back.
        since = agent.reports.mark()
        dom_of(lv, inst).suspend()
        report = agent.wait_state(inst['uuid'], 'paused', None, timeout=15, since=since)
        assert report['event'] in ('power.lifecycle', 'power.sync'), report
        dom_of(lv, inst).resume()
        agent.wait_state(inst['uuid'], 'active', None, timeout=15, since=since)
        # And a new guest can be spawned.
        inst2, rec = agent.spawn(label='lvrestart')
        assert_record(rec, 'active', 1)
        for i in (inst, inst2):
            assert_record(agent.destroy(i), 'deleted', 0)
            assert no_domain(lv, i['uuid']) and not agent.instance_dir(i).exists()
    finally:
        lv.close()
    assert agent.alive()


