"""A quiesced snapshot end to end (issue 15 must-show 2): the real agent,
libvirtd + QEMU (TCG), qemu-ga in the test guest, through ``snapshot``.

The root disk of the guest ``fs`` is an ext4 file system that the guest
mounts (meta ``ga_ext4=vda``). A mounted ext4 carries the
``needs_recovery`` flag until it is unmounted, or frozen: a copy taken
while frozen is clean, one taken without freezing is not. That is what the
tests read from the stored images with ``dumpe2fs`` and ``e2fsck`` on the
host, and a new guest mounts the frozen copy.

The guest ``hang`` runs the stub guest agent (meta ``guest_agent=hang``)
that answers pings but never a freeze: ``quiesce=true`` fails with
``GuestAgentUnavailable`` after ``[libvirt] guest_agent_timeout`` and
writes nothing, ``quiesce=null`` goes on unfrozen, and a ``destroy`` of
another guest sent meanwhile completes while the snapshot still waits.
"""

import subprocess
import pytest

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        run_agent, test_guest, wait_until)
except ImportError:
    from agent_fixture import run_agent, test_guest, wait_until  # noqa: F401


pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.timeout(600)]

AGENT_TIMEOUT = 20     # long enough that a destroy surely fits inside a hung freeze
EXT4_IMAGE = 'ext4-root'


def _prepare(env):
    env.write_config(libvirt={'guest_agent_timeout': AGENT_TIMEOUT})
    path = env.images / EXT4_IMAGE
    subprocess.run(['truncate', '-s', '64M', str(path)], check=True)
    subprocess.run(['mkfs.ext4', '-q', '-F', str(path)], check=True, timeout=60)
    path.chmod(0o644)


@pytest.fixture(scope='module')
def agent(test_guest):
    yield from run_agent(test_guest, 'snapq', prepare=_prepare)


def _spawn_fs(agent, label, image_id):
    inst = agent.make_instance(label, {'ga_ext4': 'vda'}, image_ref=image_id)
    inst, record = agent.spawn(inst, image_meta={'id': image_id, 'disk_format': 'raw'})
    assert record['vm_state'] == 'active', record
    agent.wait_console(inst['uuid'], 'GA-EXT4-MOUNTED vda', timeout=90)
    return inst


@pytest.fixture(scope='module')
def fs(agent):
    inst = _spawn_fs(agent, 'fs', EXT4_IMAGE)
    wait_until(lambda: agent.get_info(inst['uuid'])['guest_agent'], 90,
               'the guest agent to answer')
    return inst


def _needs_recovery(path):
    out = subprocess.run(['dumpe2fs', '-h', str(path)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    features = next(line for line in out.splitlines()
                    if line.startswith('Filesystem features:'))
    return 'needs_recovery' in features


def _snapshot(agent, uuid, image_id, **kw):
    return agent.call('snapshot', instance_uuid=uuid, image_id=image_id,
                      disk_format='raw', **kw)


def test_frozen_snapshot_is_clean_and_boots(agent, fs):
    uuid = fs['uuid']
    # The contrast first: copied without a freeze, the mounted file system
    # is dirty (so the check below can fail).
    _snapshot(agent, uuid, 'fs-unfrozen', quiesce=False)
    assert _needs_recovery(agent.images / 'fs-unfrozen')

    mark = agent.console_mark(uuid)
    meta = _snapshot(agent, uuid, 'fs-frozen', quiesce=True)
    assert meta['id'] == 'fs-frozen'
    log = agent.log_file.read_text()
    assert '%s: file systems frozen' % uuid in log
    assert '%s: file systems thawed' % uuid in log
    image = agent.images / 'fs-frozen'
    assert not _needs_recovery(image)
    fsck = subprocess.run(['e2fsck', '-fn', str(image)], capture_output=True,
                          text=True, timeout=60)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # The guest was thawed and goes on.
    agent.wait_console(uuid, 'HEARTBEAT', timeout=30, since=mark)
    record = agent.get_info(uuid)
    assert (record['vm_state'], record['power_state']) == ('active', 1)
    # A new guest mounts the frozen copy.
    _spawn_fs(agent, 'fromsnap', 'fs-frozen')


def test_hung_freeze_fails_or_goes_on_unfrozen_and_blocks_nothing(agent):
    hang, _ = agent.spawn(label='hang', metadata={'guest_agent': 'hang'})
    other, _ = agent.spawn(label='other')
    agent.wait_console(hang['uuid'], 'GA-STUB', timeout=90)
    # A cast: the test's client makes one call at a time, and the destroy
    # below must be able to go while the snapshot waits.
    since = agent.reports.mark()
    agent.cast('snapshot', instance_uuid=hang['uuid'], image_id='hang-q',
               disk_format='raw', quiesce=True)
    agent.wait_console(hang['uuid'], 'GA-STUB-FREEZE-IGNORED', timeout=60)
    # The freeze hangs; a destroy of another guest is answered meanwhile.
    assert agent.destroy(other)['vm_state'] == 'deleted'

    def snapshot_reports():
        return [r for r in agent.reports.states(hang['uuid'], since)
                if r['event'] in ('snapshot.end', 'snapshot.error')]
    assert snapshot_reports() == [], 'the snapshot did not wait for its freeze'
    wait_until(snapshot_reports, AGENT_TIMEOUT * 4 + 60, 'the snapshot verdict')
    (verdict,) = snapshot_reports()
    assert verdict['event'] == 'snapshot.error'
    assert verdict['error']['class'] == 'GuestAgentUnavailable', verdict
    assert not (agent.images / 'hang-q').exists()
    record = agent.get_info(hang['uuid'])
    assert (record['vm_state'], record['task_state'], record['power_state']) == (
        'active', None, 1)
    # quiesce null: the same hang costs the deadline, then an unfrozen copy.
    meta = _snapshot(agent, hang['uuid'], 'hang-null', quiesce=None)
    assert (agent.images / 'hang-null').stat().st_size == meta['size']
    assert '%s: freeze failed' % hang['uuid'] in agent.log_file.read_text()
