"""Hot-plug on a q35 guest: spare PCIe root ports, and a clear error when
the machine has no port left (not a libvirt internal error).

Its own agent with ``[libvirt] hw_machine_type = q35`` and
``num_pcie_ports = 1``; one guest.
"""

import os
import re
import shutil
import tempfile
import uuid as uuidlib

import pytest

try:
    from tests.functional import storage_fixture as sf
    from tests.functional.agent_fixture import (  # noqa: F401
        WORK_ROOT, open_libvirt, run_agent, test_guest, wait_until)
except ImportError:
    import storage_fixture as sf
    from agent_fixture import (  # noqa: F401
        WORK_ROOT, open_libvirt, run_agent, test_guest, wait_until)

from compute_agent.rpc.client import RemoteError
from compute_agent.virt import config

MAX_TRIES = 8


@pytest.fixture(scope='module')
def agent(test_guest):
    yield from run_agent(test_guest, 'q35', lambda env: env.write_config(
        libvirt={'hw_machine_type': 'q35', 'num_pcie_ports': 1}))


@pytest.fixture(scope='module')
def workdir():
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix='q35-', dir=WORK_ROOT)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def live_disks(uuid):
    lv = open_libvirt()
    try:
        xml = lv.lookupByUUIDString(uuid).XMLDesc(0)
    finally:
        lv.close()
    return config.Domain.parse(xml), {d.target_dev for d in config.Domain.parse(xml).disks}


def test_q35_takes_hot_plugs_on_spare_ports_then_fails_clearly(agent, workdir):
    inst, _ = agent.spawn(label='q35')
    uuid = inst['uuid']
    agent.wait_console(uuid, 'READY', timeout=90)
    dom, _ = live_disks(uuid)
    assert dom.os.machine.startswith('pc-q35') or dom.os.machine == 'q35'

    attached, failure = [], None
    for i in range(MAX_TRIES):
        volume_id = 'q35-%d-%s' % (i, uuidlib.uuid4().hex[:8])
        path = sf.make_backing_file(os.path.join(workdir, 'v%d' % i), 'q-%d' % i)
        before = (agent.get_info(uuid)['volumes'], live_disks(uuid)[1])
        try:
            agent.call('attach_volume', instance_uuid=uuid, volume_id=volume_id,
                       connection_info={'driver_volume_type': 'local',
                                        'data': {'device_path': path}})
        except RemoteError as e:
            failure = e
            # Nothing half-done: the record and the guest are as before.
            assert (agent.get_info(uuid)['volumes'], live_disks(uuid)[1]) == before
            break
        attached.append(volume_id)
    assert attached, 'a q35 guest with a spare root port took no hot-plugged disk'
    assert failure is not None, 'all %d hot-plugs succeeded' % MAX_TRIES
    assert failure.exc_type == 'VolumeAttachFailed'
    assert "machine type cannot take another hot-plugged device" in str(failure.value)
    # The guest saw the first one (PCIe native hot-plug).
    wait_until(lambda: re.search(r'^HOTPLUG-DISK \S+ SERIAL %s MARKER q-0'
                                 % re.escape(attached[0][:20]), agent.console(uuid), re.M),
               30, 'the first hot-plugged disk on the console')
    info = agent.get_info(uuid)
    assert info['vm_state'] == 'active' and info['error']['class'] == 'VolumeAttachFailed'
    agent.destroy(inst)
