"""Live migration between two real hosts on this machine (issue 16).

Host 1 is the machine's libvirtd with a real agent; host 2 is a second
libvirtd in its own network and mount namespaces with two real agents
(second_host.py): one with its own instances_path (block migration), one
sharing host 1's (shared-storage migration). The guests are the real test
guest (TCG) with a bridge VIF (anti-spoofing filter) and a local-file
volume; the console's HEARTBEAT counter shows the guest never restarted.
"""

import os
import re
import secrets
import subprocess
from pathlib import Path

import libvirt
import pytest

from compute_agent.netfilter import nwfilter
from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        no_domain, open_libvirt, test_guest, wait_until)
    from tests.functional.agent_messages import new_request_id
    from tests.functional.plugin_install import env_with, fake_install
    from tests.functional.second_host import run_two_hosts
except ImportError:
    from agent_fixture import (  # noqa: F401
        no_domain, open_libvirt, test_guest, wait_until)
    from agent_messages import new_request_id
    from plugin_install import env_with, fake_install
    from second_host import run_two_hosts

# The guests' network (second_host.py's veth subnets stop at 10.93.250).
GUEST_NET = '10.93.251'
BOOTED = 'COMPUTE-AGENT-TEST-GUEST BOOTED'
HEARTBEAT = re.compile(r'^HEARTBEAT (\d+)', re.M)


THIRDPARTY = Path(__file__).resolve().parents[1] / 'fixtures' / 'thirdparty_vif'


@pytest.fixture(scope='module')
def hosts(test_guest, tmp_path_factory):
    """Host 1's agent also has a third-party VIF driver that host 2's lack."""
    site = fake_install(THIRDPARTY, tmp_path_factory.mktemp('site') / 'site')

    def prepare1(env):
        env.env = env_with(site, tmp_path_factory.mktemp('stevedore'))
    yield from run_two_hosts(test_guest, 'mig', prepare1)


def random_mac():
    return 'fa:16:3e:%02x:%02x:%02x' % tuple(secrets.token_bytes(3))


def spawn_guest(hosts, label):
    """A running guest on host 1 with a bridge VIF and a local-file volume."""
    a1 = hosts.agent1
    vif = {'id': 'port-' + secrets.token_hex(4), 'address': random_mac(),
           'type': 'bridge', 'devname': a1.fresh_link('tapmg'),
           'network': {'id': 'net-mig', 'bridge': hosts.bridge, 'label': 'mig',
                       'mtu': 1500,
                       'subnets': [{'cidr': GUEST_NET + '.0/24', 'gateway': None,
                                    'dns': [],
                                    'ips': [{'address': GUEST_NET + '.%d' % (
                                        secrets.randbelow(200) + 10)}]}]},
           'details': {}}
    vol = a1.root / f'vol-{label}-{secrets.token_hex(3)}.img'
    subprocess.run(['truncate', '-s', '16M', str(vol)], check=True)
    os.chmod(vol, 0o666)
    bdi = {'block_device_mapping': [{
        'mount_device': '/dev/vdb', 'volume_id': 'vol-' + label,
        'connection_info': {'driver_volume_type': 'local',
                            'data': {'device_path': str(vol)}}}]}
    inst, rec = a1.spawn(label=label, network_info=[vif], block_device_info=bdi)
    assert rec['vm_state'] == 'active', rec
    a1.wait_console(inst['uuid'], 'HEARTBEAT 1', timeout=90)
    return inst, vif


def last_heartbeat(agent, uuid):
    beats = [int(n) for n in HEARTBEAT.findall(agent.console(uuid))]
    return max(beats) if beats else 0


def assert_left_nothing_on_source(hosts, inst, vif, files_gone=True):
    a1 = hosts.agent1
    uuid = inst['uuid']
    with pytest.raises(RemoteError) as ei:
        a1.get_info(uuid)
    assert ei.value.exc_type == 'InstanceNotFound'
    lv = open_libvirt()
    try:
        assert no_domain(lv, uuid)
        with pytest.raises(libvirt.libvirtError):
            lv.nwfilterLookupByName(nwfilter.filter_name(vif))
    finally:
        lv.close()
    assert subprocess.run(['ip', 'link', 'show', vif['devname']],
                          capture_output=True).returncode != 0, 'tap left'
    if files_gone:
        assert not a1.instance_dir(inst).exists()


def migrate_and_check(hosts, dest, label, block):
    assert hosts.alive(), 'a libvirtd is down (not the agents\' fault)'
    a1 = hosts.agent1
    inst, vif = spawn_guest(hosts, label)
    uuid = inst['uuid']
    dest.instances[uuid] = inst      # the destination's teardown removes it
    before = last_heartbeat(a1, uuid)
    since = a1.reports.mark()
    rid = new_request_id()
    out = a1.call('live_migrate', request_id=rid, instance_uuid=uuid,
                  dest_host=dest.host, block_migration=block)
    assert out['host'] == dest.host and out['vm_state'] == 'active', out
    assert out['task_state'] is None and out['power_state'] == 1, out
    start = a1.wait_state(uuid, 'active', 'migrating', since=since)
    assert start['host'] == a1.host and start['event'] == 'live_migrate.start'
    end = a1.reports.wait(lambda r: r.get('instance_uuid') == uuid
                          and r.get('event') == 'live_migrate.end', 30,
                          'live_migrate.end', since)
    assert end['host'] == dest.host and end['vm_state'] == 'active', end
    assert end['sequence'] > start['sequence']
    assert end['_context'].get('request_id') == rid
    later = [r for r in a1.reports.states(uuid, since)
             if r['sequence'] > end['sequence'] or r is end]
    assert all(r['host'] == dest.host for r in later), later
    info = dest.get_info(uuid)
    assert info['host'] == dest.host and info['power_state'] == 1, info
    assert info['volumes'][0]['volume_id'] == 'vol-' + label
    lv2 = hosts.second.open()
    try:
        assert lv2.lookupByUUIDString(uuid).isActive()
    finally:
        lv2.close()
    assert_left_nothing_on_source(hosts, inst, vif, files_gone=block)
    # Its network works there: host 2 (its side of the bridge) pings it
    # (busybox-static's ping: the machine may have no other).
    ns = ('ip', 'netns', 'exec', hosts.second.netns)
    subprocess.run([*ns, 'ip', 'addr', 'replace', GUEST_NET + '.1/24', 'dev',
                    hosts.bridge], check=True)
    guest_ip = info['vifs'][0]['ips'][0]
    wait_until(lambda: subprocess.run([*ns, 'busybox', 'ping', '-c', '1', '-W', '1', guest_ip],
                                      capture_output=True).returncode == 0,
               30, f'{guest_ip} answering ping on host 2', interval=0.5)
    # The counter goes on at the destination: the guest never restarted.
    wait_until(lambda: last_heartbeat(dest, uuid) > before, 40,
               f'a HEARTBEAT above {before} at the destination', interval=1)
    # No new boot: with shared storage the log is the source's, appended to.
    assert dest.console(uuid, 10000).count(BOOTED) == (0 if block else 1)
    # A redelivered request gets the outcome and starts nothing.
    again = a1.call('live_migrate', request_id=rid, instance_uuid=uuid,
                    dest_host=dest.host, block_migration=block)
    assert again['host'] == dest.host
    return inst, vif


def test_block_migration(hosts):
    inst, _ = migrate_and_check(hosts, hosts.agent2, 'blk', block=True)
    dest_dir = hosts.agent2.instance_dir(inst)
    assert (dest_dir / 'disk').exists()
    hosts.agent2.destroy(inst)


def test_shared_storage_migration(hosts):
    inst, _ = migrate_and_check(hosts, hosts.agent2_shared, 'shr', block=False)
    assert hosts.agent2_shared.instance_dir(inst).exists()
    hosts.agent2_shared.destroy(inst)
    assert not hosts.agent1.instance_dir(inst).exists()


# -- pre-check failures: nothing changes on either host -----------------------------

@pytest.fixture(scope='module')
def resident(hosts):
    """A guest on host 1 that stays there."""
    inst, vif = spawn_guest(hosts, 'stay')
    return inst


def refused(hosts, inst, **args):
    a1 = hosts.agent1
    uuid = inst['uuid']
    before = a1.get_info(uuid)
    since = a1.reports.mark()
    # A failure reply, not the call's own timeout.
    with pytest.raises(RemoteError) as ei:
        a1.call('live_migrate', instance_uuid=uuid, **args)
    assert ei.value.exc_type == 'MigrationPreCheckError', ei.value
    after = a1.get_info(uuid)
    assert (after['vm_state'], after['task_state'], after['power_state'],
            after['host']) == ('active', None, 1, a1.host)
    assert after['devices'] == before['devices']
    err = a1.reports.wait(lambda r: r.get('instance_uuid') == uuid
                          and r.get('event') == 'live_migrate.error', 10,
                          'live_migrate.error', since)
    assert err['vm_state'] == 'active' and err['power_state'] == 1
    assert err['error']['class'] == 'MigrationPreCheckError'
    for dest in (hosts.agent2, hosts.agent2_shared):
        if dest.alive():
            with pytest.raises(RemoteError):
                dest.get_info(uuid)
    lv2 = hosts.second.open()
    try:
        assert no_domain(lv2, uuid)
    finally:
        lv2.close()
    assert not hosts.agent2.instance_dir(inst).exists()
    return ei.value


def test_unknown_destination(hosts, resident):
    err = refused(hosts, resident, dest_host='no-such-host-' + secrets.token_hex(3))
    assert 'no agent' in str(err)


def test_destination_down(hosts, resident):
    dest = hosts.agent2
    assert dest.stop() == 0
    try:
        err = refused(hosts, resident, dest_host=dest.host,
                            block_migration=True)
        assert 'did not answer' in str(err)
    finally:
        dest.start()


def test_shared_storage_claim_is_checked(hosts, resident):
    err = refused(hosts, resident, dest_host=hosts.agent2.host,
                     block_migration=False)
    assert 'do not share' in str(err)
    err = refused(hosts, resident, dest_host=hosts.agent2_shared.host,
                     block_migration=True)
    assert 'share instances_path' in str(err)


def test_not_enough_memory(hosts, resident):
    dest = hosts.agent2
    dest.stop()
    dest.write_config(DEFAULT={'reserved_host_memory_mb': 10 ** 8})
    dest.start()
    try:
        err = refused(hosts, resident, dest_host=dest.host,
                         block_migration=True)
        assert 'not enough free memory' in str(err)
    finally:
        dest.stop()
        dest.write_config()
        dest.start()


def test_abort_without_migration_is_invalid(hosts, resident):
    with pytest.raises(RemoteError) as ei:
        hosts.agent1.call('live_migrate_abort', instance_uuid=resident['uuid'])
    assert ei.value.exc_type == 'InstanceInvalidState'


def test_abort_keeps_the_guest_on_the_source(hosts):
    """A migration slowed to 1 MiB/s is cancelled while libvirt copies."""
    a1, dest = hosts.agent1, hosts.agent2
    inst, vif = spawn_guest(hosts, 'abort')
    uuid = inst['uuid']
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(uuid)
        dom.migrateSetMaxSpeed(1, 0)
        before = last_heartbeat(a1, uuid)
        since = a1.reports.mark()
        a1.cast('live_migrate', instance_uuid=uuid, dest_host=dest.host,
                block_migration=True)
        wait_until(lambda: dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE, 60,
                   'the migration job on the source', interval=0.05)
        out = a1.call('live_migrate_abort', instance_uuid=uuid)
        assert out['host'] == a1.host
        err = a1.reports.wait(lambda r: r.get('instance_uuid') == uuid
                              and r.get('event') == 'live_migrate.error', 60,
                              'live_migrate.error', since)
        assert err['host'] == a1.host and err['error']['class'] == 'MigrationError'
        assert (err['vm_state'], err['power_state']) == ('active', 1)
        assert dom.isActive()
    finally:
        lv.close()
    info = a1.get_info(uuid)
    assert (info['vm_state'], info['task_state'], info['host']) == (
        'active', None, a1.host)
    with pytest.raises(RemoteError):
        dest.get_info(uuid)
    lv2 = hosts.second.open()
    try:
        assert no_domain(lv2, uuid)
    finally:
        lv2.close()
    assert not dest.instance_dir(inst).exists()
    wait_until(lambda: last_heartbeat(a1, uuid) > before, 40,
               'the guest still beating on the source', interval=1)
    a1.destroy(inst)


def test_unknown_vif_type_at_the_destination(hosts):
    """Host 1 knows the third-party VIF type, host 2 does not."""
    a1 = hosts.agent1
    tap = a1.fresh_link('tapmt')
    subprocess.run(['ip', 'tuntap', 'add', 'dev', tap, 'mode', 'tap'], check=True)
    subprocess.run(['ip', 'link', 'set', tap, 'up'], check=True)
    vif = {'id': 'port-' + secrets.token_hex(4), 'address': random_mac(),
           'type': 'thirdparty', 'devname': tap,
           'network': {'id': 'net-3p', 'label': '3p', 'subnets': []}, 'details': {}}
    inst, rec = a1.spawn(label='vif3p', network_info=[vif])
    assert rec['vm_state'] == 'active', rec
    err = refused(hosts, inst, dest_host=hosts.agent2.host, block_migration=True)
    assert 'no VIF driver' in str(err)
    a1.destroy(inst)


# -- crashes: the redelivered request settles the migration -------------------------

def test_source_agent_killed_during_the_copy(hosts):
    """SIGKILL of the source agent while libvirt copies; the restarted
    agent's redelivery of the same request settles it: exactly one running
    domain (at the destination), one owner, the end reported from there."""
    a1, dest = hosts.agent1, hosts.agent2
    inst, vif = spawn_guest(hosts, 'crash')
    uuid = inst['uuid']
    dest.instances[uuid] = inst
    before = last_heartbeat(a1, uuid)
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(uuid)
        dom.migrateSetMaxSpeed(1, 0)
        since = a1.reports.mark()
        rid = new_request_id()
        a1.cast('live_migrate', request_id=rid, instance_uuid=uuid,
                dest_host=dest.host, block_migration=True)
        wait_until(lambda: dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE, 60,
                   'the migration job on the source', interval=0.05)
        a1.kill()
        # Full speed again: libvirtd finishes the copy on its own (or, if
        # it gave up with its client, the redelivery migrates again).
        dom.migrateSetMaxSpeed(8 * 1024 * 1024, 0)
    finally:
        lv.close()
    a1.start()
    end = a1.reports.wait(lambda r: r.get('instance_uuid') == uuid
                          and r.get('event') == 'live_migrate.end', 120,
                          'live_migrate.end after the restart', since)
    assert end['host'] == dest.host and end['vm_state'] == 'active'
    wait_until(lambda: _not_found(a1, uuid), 30, 'the source to forget it')
    assert dest.get_info(uuid)['host'] == dest.host
    lv2 = hosts.second.open()
    try:
        running = [d for d in lv2.listAllDomains(0) if d.UUIDString() == uuid]
        assert len(running) == 1 and running[0].isActive()
    finally:
        lv2.close()
    assert_left_nothing_on_source(hosts, inst, vif)
    wait_until(lambda: last_heartbeat(dest, uuid) > before, 40,
               f'a HEARTBEAT above {before} at the destination', interval=1)
    dest.destroy(inst)


def test_destination_agent_killed_before_take_over(hosts):
    """SIGKILL of the destination agent while libvirt copies: the guest
    arrives there anyway, and the source keeps asking until the restarted
    destination agent takes it over."""
    a1, dest = hosts.agent1, hosts.agent2
    inst, vif = spawn_guest(hosts, 'dkill')
    uuid = inst['uuid']
    dest.instances[uuid] = inst
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(uuid)
        dom.migrateSetMaxSpeed(1, 0)
        since = a1.reports.mark()
        a1.cast('live_migrate', instance_uuid=uuid, dest_host=dest.host,
                block_migration=True)
        wait_until(lambda: dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE, 60,
                   'the migration job on the source', interval=0.05)
        dest.kill()
        dom.migrateSetMaxSpeed(8 * 1024 * 1024, 0)
        wait_until(lambda: not dom.isActive(), 60, 'the guest to leave host 1')
    finally:
        lv.close()
    assert hosts.alive()
    dest.start()
    end = a1.reports.wait(lambda r: r.get('instance_uuid') == uuid
                          and r.get('event') == 'live_migrate.end', 120,
                          'live_migrate.end after the restart', since)
    assert end['host'] == dest.host
    wait_until(lambda: _not_found(a1, uuid), 30, 'the source to forget it')
    assert dest.get_info(uuid)['host'] == dest.host
    assert_left_nothing_on_source(hosts, inst, vif)
    dest.destroy(inst)


def _not_found(agent, uuid):
    try:
        agent.get_info(uuid)
    except RemoteError as e:
        return e.exc_type == 'InstanceNotFound'
    return False
