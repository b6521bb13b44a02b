"""A third-party volume driver, installed as a plugin, used by a real spawn.

tests/fixtures/thirdparty_volume registers the ``driver_volume_type``
``thirdparty_file`` under the entry point group
``compute_agent.volume_drivers`` and nothing else: compute-agent knows
nothing about it. It is "installed" for the agent of this module only (a
generated ``.dist-info`` on the agent's ``PYTHONPATH``, what ``pip install``
leaves for discovery; the venv stays as it is), and the real agent, driven
over RabbitMQ, spawns a QEMU guest with one of its volumes: the disk is in
the defined domain XML, the guest boots and sees it, and the driver's
connect and disconnect are called.

Needs root, RabbitMQ and libvirtd (tools/start-services.sh); with CI set a
missing one is a failure.
"""

import os
import secrets

import pytest
from lxml import etree
from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        BOOT_MARKER, no_domain, open_libvirt, run_agent,
        test_guest)
    from tests.functional.plugin_install import env_with, fake_install
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_fixture import (  # noqa: F401
        BOOT_MARKER, no_domain, open_libvirt, run_agent,
        test_guest)
    from plugin_install import env_with, fake_install

pytestmark = [pytest.mark.libvirt]

FIXTURE = os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'thirdparty_volume')
VOLUME_TYPE = 'thirdparty_file'
TYPE_FIELD = 'block_device_info.block_device_mapping[0].connection_info.driver_volume_type'


@pytest.fixture(scope='module')
def agent(test_guest):
    """A real agent that has the third-party volume driver installed."""
    def prepare(env):
        site = fake_install(FIXTURE, env.root / 'site')
        env.env = env_with(site, env.root / 'cache')
        env.calls_log = env.root / 'volume-calls.log'
        env.write_config(thirdparty_volume={'log_file': env.calls_log})
    yield from run_agent(test_guest, 'volplug', prepare)


@pytest.fixture(scope='module')
def lv():
    conn = open_libvirt()
    yield conn
    conn.close()


def make_volume(agent, size=8 << 20):
    """A raw file QEMU (libvirt-qemu) can open, under the agent's 0755 root."""
    vol_dir = agent.root / 'volumes'
    vol_dir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(vol_dir, 0o755)
    path = vol_dir / ('vol-%s.img' % secrets.token_hex(3))
    with open(path, 'wb') as f:
        f.truncate(size)
    os.chmod(path, 0o644)
    return path


def bdi_for(data, volume_type=VOLUME_TYPE, device='/dev/vdb'):
    return {'block_device_mapping': [{
        'mount_device': device, 'volume_id': 'tp-vol-1',
        'connection_info': {'driver_volume_type': volume_type, 'data': data}}]}


def calls(agent):
    try:
        return agent.calls_log.read_text().splitlines()
    except FileNotFoundError:
        return []


def file_disks(xml):
    """{target dev: source file} of the domain's file disks."""
    root = etree.fromstring(xml.encode())
    return {d.find('target').get('dev'): d.find('source').get('file')
            for d in root.findall('devices/disk')
            if d.get('type') == 'file' and d.find('source') is not None}


def test_spawn_uses_the_thirdparty_volume_driver(agent, lv):
    vol = make_volume(agent)
    bdi = bdi_for({'path': str(vol)})
    inst, record = agent.spawn(block_device_info=bdi, label='tpvol')
    assert record['vm_state'] == 'active' and record['power_state'] == 1, record
    assert record['devices'].get('volume0') == 'vdb', record['devices']
    assert calls(agent) == ['connect %s' % vol]

    # The driver's disk is in the domain libvirt defined, as the driver said.
    dom = lv.lookupByUUIDString(inst['uuid'])
    disks = file_disks(dom.XMLDesc(0))
    assert disks['vdb'] == str(vol), disks
    assert disks['vda'] == str(agent.instance_dir(inst) / 'disk'), disks

    # The guest boots and sees it.
    out = agent.wait_console(inst['uuid'], 'BLOCK-DEVICES:')
    assert BOOT_MARKER in out
    block = [line for line in out.splitlines() if line.startswith('BLOCK-DEVICES:')][-1]
    assert 'vdb' in block.split()[1:], block

    agent.call('destroy', instance={'uuid': inst['uuid']}, network_info=[],
               block_device_info=bdi, cleanup=True)
    assert no_domain(lv, inst['uuid'])
    assert calls(agent) == ['connect %s' % vol, 'disconnect %s' % vol]
    assert vol.exists()             # the volume is not the agent's to delete


def test_attach_volume_uses_the_thirdparty_volume_driver(agent, lv):
    """attach_volume/detach_volume of a running guest through the plugin:
    the guest sees the disk arrive (by its serial) and leave."""
    inst, record = agent.spawn(label='tphot')
    uuid = inst['uuid']
    agent.wait_console(uuid, 'READY', timeout=90)
    vol = make_volume(agent)
    before = calls(agent)
    record = agent.call('attach_volume', instance_uuid=uuid, volume_id='tp-hot-1',
                        connection_info={'driver_volume_type': VOLUME_TYPE,
                                         'data': {'path': str(vol)}})
    assert record['volumes'] == [{'volume_id': 'tp-hot-1', 'device': record[
        'volumes'][0]['device'], 'driver_volume_type': VOLUME_TYPE}]
    dev = record['volumes'][0]['device']
    assert calls(agent)[len(before):] == ['connect %s' % vol]
    assert file_disks(lv.lookupByUUIDString(uuid).XMLDesc(0))[dev] == str(vol)
    agent.wait_console(uuid, 'SERIAL tp-hot-1', timeout=60)     # HOTPLUG-DISK

    record = agent.call('detach_volume', instance_uuid=uuid, volume_id='tp-hot-1')
    assert record['volumes'] == []
    assert dev not in file_disks(lv.lookupByUUIDString(uuid).XMLDesc(0))
    assert calls(agent)[len(before):] == ['connect %s' % vol, 'disconnect %s' % vol]
    agent.destroy(inst)


def _refused(agent, bdi):
    """Spawn with ``bdi``; the InvalidRequest message; nothing was created."""
    dirs_before = sorted(os.listdir(agent.instances_path))
    inst = agent.make_instance('tpbad')
    with pytest.raises(RemoteError) as err:
        agent.spawn(inst, block_device_info=bdi)
    assert err.value.exc_type == 'InvalidRequest', err.value
    with pytest.raises(RemoteError) as info:
        agent.get_info(inst['uuid'])
    assert info.value.exc_type == 'InstanceNotFound'
    assert sorted(os.listdir(agent.instances_path)) == dirs_before
    return err.value.value


def test_unknown_volume_type_lists_the_installed_plugins(agent):
    before = calls(agent)
    message = _refused(agent, bdi_for({'path': '/dev/null'}, volume_type='not_installed'))
    assert 'Invalid request: %s: unknown volume driver type (installed: ' % TYPE_FIELD \
        in message, message
    assert VOLUME_TYPE in message and 'local' in message
    assert 'not_installed' not in message
    assert calls(agent) == before


def test_plugin_checks_its_own_data(agent):
    before = calls(agent)
    message = _refused(agent, bdi_for({'path': 'relative/disk.img'}))
    assert 'connection_info.data.path: must be a normalized absolute path' in message, message
    assert 'relative/disk.img' not in message
    assert calls(agent) == before
