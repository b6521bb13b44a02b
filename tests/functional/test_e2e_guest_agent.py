"""The guest agent end to end: the real agent, libvirtd + QEMU (TCG), qemu-ga.

One agent (``[libvirt] guest_agent_timeout = 20``) and three guests shared
by the tests (tools/build-test-guest.sh, "guest agent"):

* ``ga``: qemu-ga, a bridge VIF with a fixed address, and an ext4 file
  system on a local volume mounted at /mnt/ga-ext4;
* ``noga``: boots without a guest agent (meta ``guest_agent=off``);
* ``hang``: a stub guest agent that answers guest-sync/ping but never a
  freeze nor a password (meta ``guest_agent=hang``).

``quiesced()`` is called here in the test process, as the snapshot
operation will call it inside the agent, with a ``GuestAgent`` of its own
(its own short deadline and instance directory, so the agent's probes never
see its frozen mark). The password hash is read back from the guest's
/etc/shadow through the guest agent (guest-file-open/read).
"""

import base64
import json
import logging
import os
import subprocess
import threading
import types
import uuid as uuidlib

import libvirt
import libvirt_qemu
import pytest

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        WORK_ROOT, open_libvirt, run_agent, test_guest, wait_until)
except ImportError:
    from agent_fixture import (  # noqa: F401
        WORK_ROOT, open_libvirt, run_agent, test_guest, wait_until)

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.rpc.client import RemoteError
from compute_agent.virt import connection
from compute_agent.virt import guest_agent
from oslo_config import cfg

AGENT_TIMEOUT = 20
GUEST_IP = '10.213.7.5'


def _prepare(env):
    env.write_config(libvirt={'guest_agent_timeout': AGENT_TIMEOUT})


@pytest.fixture(scope='module')
def agent(test_guest):
    yield from run_agent(test_guest, 'guestagent', prepare=_prepare)


@pytest.fixture(scope='module')
def lv():
    conn = open_libvirt()
    yield conn
    conn.close()


def _vif(agent):
    bridge, tap = agent.fresh_link('cabr'), agent.fresh_link('tapca')
    return {'id': str(uuidlib.uuid4()), 'address': 'fa:16:3e:4a:00:05',
            'type': 'bridge', 'devname': tap,
            'network': {'id': 'net-ga', 'bridge': bridge, 'label': 'ga',
                        'mtu': None, 'subnets': [{
                            'cidr': '10.213.7.0/24', 'gateway': None,
                            'ips': [{'address': GUEST_IP}], 'dns': []}]},
            'details': {}}


def _ext4_volume(agent):
    """A local volume holding an ext4 file system; its block_device_info."""
    path = agent.root / ('ga-ext4-%s.img' % agent.tag)
    subprocess.run(['truncate', '-s', '32M', str(path)], check=True)
    subprocess.run(['mkfs.ext4', '-q', '-F', str(path)], check=True, timeout=60)
    os.chmod(path, 0o666)
    volume_id = 'gaext4-' + uuidlib.uuid4().hex
    return volume_id[:20], {'block_device_mapping': [{
        'mount_device': '/dev/vdc', 'volume_id': volume_id,
        'connection_info': {'driver_volume_type': 'local',
                            'data': {'device_path': str(path)}}}]}


def _spawn(agent, label, meta, **kw):
    inst, record = agent.spawn(label=label, metadata=meta, **kw)
    assert record['vm_state'] == 'active', record
    return types.SimpleNamespace(inst=inst, uuid=inst['uuid'],
                                 name=inst['name'], record=record)


@pytest.fixture(scope='module')
def guests(agent):
    serial, bdi = _ext4_volume(agent)
    ga = _spawn(agent, 'ga', {'ga_ext4': serial}, network_info=[_vif(agent)],
                block_device_info=bdi)
    noga = _spawn(agent, 'noga', {'guest_agent': 'off'})
    hang = _spawn(agent, 'hang', {'guest_agent': 'hang'})
    agent.wait_console(ga.uuid, 'GA-STARTED', timeout=90)
    agent.wait_console(ga.uuid, 'GA-EXT4-MOUNTED', timeout=10)
    agent.wait_console(noga.uuid, 'GA-OFF', timeout=90)
    agent.wait_console(hang.uuid, 'GA-STUB', timeout=90)
    return types.SimpleNamespace(ga=ga, noga=noga, hang=hang)


def agent_command(lv, uuid, command, **arguments):
    """A guest-agent command from the test itself (not through the agent)."""
    text = json.dumps({'execute': command, 'arguments': arguments}
                      if arguments else {'execute': command})
    dom = lv.lookupByUUIDString(uuid)
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, text, 10, 0))['return']


def read_guest_file(lv, uuid, path):
    handle = agent_command(lv, uuid, 'guest-file-open', path=path, mode='r')
    try:
        out = agent_command(lv, uuid, 'guest-file-read', handle=handle,
                            count=65536)
        return base64.b64decode(out['buf-b64']).decode()
    finally:
        agent_command(lv, uuid, 'guest-file-close', handle=handle)


def local_agent(agent, tmp_path, names, timeout):
    """A GuestAgent in the test process, with its own deadline and its own
    instance directories (so the agent's probes never see its marks)."""
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    conf.set_override('instances_path', str(tmp_path))
    conf.set_override('state_path', str(tmp_path))
    conf.set_override('virt_type', 'qemu', 'libvirt')
    conf.set_override('connection_uri', 'qemu:///system', 'libvirt')
    conf.set_override('guest_agent_timeout', timeout, 'libvirt')
    for name in names:
        (tmp_path / name).mkdir()
    return guest_agent.GuestAgent(conf, connection.Connection(conf))


# -- the record ----------------------------------------------------------------------

def test_record_shows_an_answering_guest_agent_and_its_addresses(agent, guests):
    def shown():
        info = agent.get_info(guests.ga.uuid)
        ips = [ip for i in info['guest_addresses'] or () for ip in i['ips']]
        return info if info['guest_agent'] and GUEST_IP in ips else None
    try:
        info = wait_until(shown, 60, 'guest_agent true and the guest address')
    except AssertionError:      # what the guest and the agent said, for the log
        print(agent.console(guests.ga.uuid), agent.get_info(guests.ga.uuid))
        raise
    nic = next(i for i in info['guest_addresses'] if GUEST_IP in i['ips'])
    assert nic['mac'] == 'fa:16:3e:4a:00:05'
    assert all(not ip.startswith('127.') for i in info['guest_addresses']
               for ip in i['ips'])
    listed = {r['uuid']: r for r in agent.call('list_instances')}
    assert listed[guests.ga.uuid]['guest_agent'] is True


def test_record_without_guest_agent(agent, guests):
    # The stub answers pings: its record shows a guest agent, so the probes
    # have run by the time it does; the guest without one stays false.
    wait_until(lambda: agent.get_info(guests.hang.uuid)['guest_agent'], 60,
               'the stub guest agent answers')
    info = agent.get_info(guests.noga.uuid)
    assert info['guest_agent'] is False
    assert info['guest_addresses'] is None


# -- set_admin_password (must-show 5) -------------------------------------------------

def test_set_admin_password_sets_the_hash_in_shadow(agent, guests, lv):
    password = 'Ca-%s pass' % uuidlib.uuid4().hex[:8]
    mark = agent.reports.mark()
    record = agent.call('set_admin_password', instance_uuid=guests.ga.uuid,
                        admin_password=password)
    assert (record['vm_state'], record['task_state']) == ('active', None)
    states = [(r['vm_state'], r['task_state'])
              for r in agent.reports.states(guests.ga.uuid, mark)]
    assert ('active', 'updating_password') in states
    agent.wait_console(guests.ga.uuid, 'GA-PASSWORD-SET root', timeout=10)
    shadow = read_guest_file(lv, guests.ga.uuid, '/etc/shadow')
    hashed = next(line.split(':')[1] for line in shadow.splitlines()
                  if line.startswith('root:'))
    assert hashed.startswith('$6$')
    salt = hashed.split('$')[2]
    expected = subprocess.run(['openssl', 'passwd', '-6', '-salt', salt,
                               '-stdin'], input=password, text=True,
                              capture_output=True, check=True).stdout.strip()
    assert hashed == expected
    assert password not in agent.log_file.read_text(errors='replace')


def test_set_admin_password_without_guest_agent(agent, guests):
    before = agent.get_info(guests.noga.uuid)
    with pytest.raises(RemoteError) as info:
        agent.call('set_admin_password', instance_uuid=guests.noga.uuid,
                   admin_password='secret-never-set', rpc_timeout=AGENT_TIMEOUT + 30)
    assert info.value.exc_type == 'GuestAgentUnavailable'
    assert 'within' not in info.value.value      # refused, not timed out
    after = agent.get_info(guests.noga.uuid)
    assert (after['vm_state'], after['task_state'], after['power_state']) == (
        before['vm_state'], None, before['power_state'])
    assert after['error']['class'] == 'GuestAgentUnavailable'
    assert 'secret-never-set' not in agent.log_file.read_text(errors='replace')


def test_set_admin_password_bad_user(agent, guests):
    with pytest.raises(RemoteError) as info:
        agent.call('set_admin_password', instance_uuid=guests.ga.uuid,
                   admin_password='x', user='root:0')
    assert info.value.exc_type == 'InvalidRequest'
    assert 'user' in info.value.value


# -- quiesce (must-show 2, the guest-agent half) -------------------------------------------

def test_quiesced_freezes_and_thaws(agent, guests, lv, tmp_path, caplog):
    ga = local_agent(agent, tmp_path, [guests.ga.name], timeout=20)
    caplog.set_level(logging.INFO, logger='compute_agent.virt.guest_agent')
    with guest_agent.quiesced(ga, guests.ga.name, guests.ga.uuid, True) as frozen:
        assert frozen is True
        assert agent_command(lv, guests.ga.uuid, 'guest-fsfreeze-status') == 'frozen'
        assert (tmp_path / guests.ga.name / guest_agent.FROZEN_MARK).exists()
    assert agent_command(lv, guests.ga.uuid, 'guest-fsfreeze-status') == 'thawed'
    assert not (tmp_path / guests.ga.name / guest_agent.FROZEN_MARK).exists()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any('frozen' in m and guests.ga.uuid in m for m in lines), lines
    assert any('thawed' in m and guests.ga.uuid in m for m in lines), lines


def test_quiesced_thaws_when_the_body_fails(agent, guests, lv, tmp_path):
    ga = local_agent(agent, tmp_path, [guests.ga.name], timeout=20)
    with pytest.raises(RuntimeError):
        with guest_agent.quiesced(ga, guests.ga.name, guests.ga.uuid, None) as frozen:
            assert frozen is True
            raise RuntimeError('snapshot failed')
    assert agent_command(lv, guests.ga.uuid, 'guest-fsfreeze-status') == 'thawed'


def test_quiesce_none_without_guest_agent_goes_on_unfrozen(agent, guests, tmp_path):
    ga = local_agent(agent, tmp_path, [guests.noga.name], timeout=20)
    with guest_agent.quiesced(ga, guests.noga.name, guests.noga.uuid, None) as frozen:
        assert frozen is False
    with pytest.raises(exception.GuestAgentUnavailable):
        with guest_agent.quiesced(ga, guests.noga.name, guests.noga.uuid, True):
            pass
    with guest_agent.quiesced(ga, guests.noga.name, guests.noga.uuid, False) as frozen:
        assert frozen is False


def test_hung_freeze_fails_after_its_deadline_and_blocks_no_other_guest(
        agent, guests, lv, tmp_path):
    """quiesce=True against the stub: GuestAgentUnavailable after the
    deadline; a destroy of another guest sent meanwhile completes."""
    ga = local_agent(agent, tmp_path, [guests.hang.name], timeout=30)
    other, _ = agent.spawn(label='other', metadata={'guest_agent': 'off'})
    outcome = {}

    def quiesce():
        try:
            with guest_agent.quiesced(ga, guests.hang.name, guests.hang.uuid, True):
                outcome['frozen'] = True
        except exception.GuestAgentUnavailable as e:
            outcome['error'] = e
    worker = threading.Thread(target=quiesce)
    worker.start()
    try:
        agent.wait_console(guests.hang.uuid, 'GA-STUB-FREEZE-IGNORED', timeout=30)
        record = agent.destroy(other)
        assert record['vm_state'] == 'deleted'
        assert worker.is_alive()        # the freeze still hangs meanwhile
    finally:
        worker.join(120)
    assert 'frozen' not in outcome
    assert 'within 30 s' in outcome['error'].message
    assert agent_command(lv, guests.hang.uuid, 'guest-fsfreeze-status') == 'thawed'
    assert not (tmp_path / guests.hang.name / guest_agent.FROZEN_MARK).exists()


def test_hung_freeze_with_quiesce_none_goes_on_unfrozen(agent, guests, tmp_path):
    ga = local_agent(agent, tmp_path, [guests.hang.name], timeout=3)
    with guest_agent.quiesced(ga, guests.hang.name, guests.hang.uuid, None) as frozen:
        assert frozen is False


def test_freeze_left_by_a_dead_agent_is_thawed(agent, guests, lv, tmp_path):
    """A freeze whose thaw never came (the process died): its mark lies in
    the instance directory, and the agent's guest-agent probe thaws it."""
    ga = local_agent(agent, agent.instances_path, [], timeout=20)
    ga.mark_frozen(guests.ga.name, guests.ga.uuid)
    ga.freeze(guests.ga.uuid)           # ... and this process "dies" here
    assert agent_command(lv, guests.ga.uuid, 'guest-fsfreeze-status') == 'frozen'
    wait_until(lambda: agent_command(lv, guests.ga.uuid,
                                     'guest-fsfreeze-status') == 'thawed',
               60, 'the agent thaws the leftover freeze')
    wait_until(lambda: not ga.is_marked(guests.ga.name), 10, 'the mark is gone')


def test_freeze_left_when_the_agent_was_killed_is_thawed_after_restart(
        agent, guests, lv):
    """The agent dies (SIGKILL) while a guest is frozen with its mark: the
    restarted agent thaws it, and the record still knows its guest agent."""
    agent.kill()
    try:
        ga = local_agent(agent, agent.instances_path, [], timeout=20)
        ga.mark_frozen(guests.ga.name, guests.ga.uuid)
        ga.freeze(guests.ga.uuid)
        assert agent_command(lv, guests.ga.uuid, 'guest-fsfreeze-status') == 'frozen'
    finally:
        agent.start()
    wait_until(lambda: agent_command(lv, guests.ga.uuid,
                                     'guest-fsfreeze-status') == 'thawed',
               60, 'the restarted agent thaws the guest')
    wait_until(lambda: not ga.is_marked(guests.ga.name), 10, 'the mark is gone')
    wait_until(lambda: agent.get_info(guests.ga.uuid)['guest_agent'], 30,
               'guest_agent true after the restart')


# -- destroy of the same guest during a hung command -----------------------------------------

def test_destroy_cancels_a_hung_guest_agent_command(agent):
    """set_admin_password hangs on the stub; a destroy of that guest cast
    behind it cancels it instead of waiting out the 20 s deadline."""
    hang = _spawn(agent, 'hang2', {'guest_agent': 'hang'})
    agent.wait_console(hang.uuid, 'GA-STUB', timeout=90)
    wait_until(lambda: agent.get_info(hang.uuid)['guest_agent'], 60,
               'the stub answers')
    mark = agent.reports.mark()
    agent.cast('set_admin_password', instance_uuid=hang.uuid,
               admin_password='never-set')
    agent.wait_console(hang.uuid, 'GA-STUB-PASSWORD-IGNORED', timeout=30)
    destroyed = agent.destroy(hang.inst)
    assert destroyed['vm_state'] == 'deleted'
    failed = agent.reports.wait(
        lambda r: r.get('instance_uuid') == hang.uuid
        and r.get('event') == 'set_admin_password.error', 10,
        'set_admin_password.error', mark)
    assert failed['error']['class'] == 'GuestAgentUnavailable'
    assert 'being destroyed' in failed['error']['message']   # cancelled, not timed out
    with pytest.raises(RemoteError) as info:
        agent.get_info(hang.uuid)
    assert info.value.exc_type == 'InstanceNotFound'


def test_agent_and_libvirt_still_serve(agent, guests):
    assert agent.call('ping')['host'] == agent.host
    assert agent.get_info(guests.ga.uuid)['power_state'] == 1
    assert libvirt.getVersion() > 0
