"""End to end: SIGKILL in the middle of an operation; its redelivery finishes it.

docs: protocol-delivery: a request interrupted by an agent crash is finished
when its redelivery arrives, and replies with its outcome; it is never
answered InstanceInvalidState because of the agent's own unfinished state.

The real agent process on QEMU guests, driven over RabbitMQ. Each case sends
a call from its own client (its reply queue outlives the agent), SIGKILLs
the agent at a deterministic point (the moment the operation's ``.start``
report arrives, or once libvirt shows a given step done, or with the guest
changed meanwhile as the killed operation could have left it), starts the
agent again, and checks the call's reply, get_info and libvirt's own view.
Needs root, RabbitMQ, libvirtd and the test guest; fails in CI otherwise.
"""

import os
import signal

import libvirt    # a hard dependency: missing is an error, never a skip
import pytest

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        agent, open_libvirt, test_guest, wait_until)
    from tests.functional.agent_messages import InFlight
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_fixture import (  # noqa: F401
        agent, open_libvirt, test_guest, wait_until)
    from agent_messages import InFlight

pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(600)]

READY = '\nREADY'                  # the guest handles ACPI from here on


@pytest.fixture
def lv():
    conn = open_libvirt()
    yield conn
    conn.close()


@pytest.fixture(scope='module')
def guest(agent):
    """One guest shared by the cases (each leaves it active and booted)."""
    inst, rec = agent.spawn(label='intr')
    assert rec['vm_state'] == 'active'
    agent.wait_console(inst['uuid'], READY, timeout=120)
    return inst


def interrupt(agent, uuid, method, kill_when=None, meanwhile=None, before=None,
              **args):
    """Run ``before()``; call ``method``; SIGKILL the agent when its .start
    report arrives (and ``kill_when()`` holds); run ``meanwhile()``; restart;
    return the reply. The restart must have found the operation unfinished
    (a ``recover`` report): the reply is its redelivery's."""
    if before is not None:
        before()
    since = agent.reports.mark()
    call = InFlight(agent, method, **args)
    agent.reports.wait(lambda r: r.get('event') == method + '.start'
                       and r.get('instance_uuid') == uuid, 60,
                       method + '.start', since)
    if kill_when is not None:
        wait_until(kill_when, 60, 'the kill point of ' + method, interval=0.02)
    agent.kill()
    if meanwhile is not None:
        meanwhile()
    restart = agent.reports.mark()
    agent.start()
    reply = call.reply()
    assert [r for r in agent.reports.states(uuid, restart)
            if r['event'] == 'recover'], 'the operation was not interrupted'
    return reply


def state(lv, uuid):
    try:
        return lv.lookupByUUIDString(uuid).state()[0]
    except libvirt.libvirtError:
        return None


def shut_off(lv, uuid):
    def run():
        dom = lv.lookupByUUIDString(uuid)
        if dom.isActive():
            dom.destroy()
    return run


def assert_record(rec, vm_state, power_state):
    assert (rec['vm_state'], rec['task_state'], rec['power_state'], rec['error']) == (
        vm_state, None, power_state, None), rec


def settled(agent, uuid, vm_state, power_state):
    assert_record(agent.get_info(uuid), vm_state, power_state)


def booted(agent, uuid):
    """The guest (re)booted and handles ACPI (QEMU starts a new console log
    each time it starts)."""
    agent.wait_console(uuid, READY, timeout=120)


# -- reboot ------------------------------------------------------------------------

@pytest.mark.parametrize('point', ['at-start', 'guest-off'])
def test_reboot(agent, guest, lv, point):
    """A reboot interrupted with the guest off ends with the guest running."""
    uuid = guest['uuid']
    rec = interrupt(agent, uuid, 'reboot', instance={'uuid': uuid},
                    reboot_type='SOFT',
                    meanwhile=shut_off(lv, uuid) if point == 'guest-off' else None)
    assert_record(rec, 'active', 1)
    settled(agent, uuid, 'active', 1)
    assert state(lv, uuid) == libvirt.VIR_DOMAIN_RUNNING
    booted(agent, uuid)


@pytest.mark.parametrize('point', ['at-start', 'guest-off'])
def test_power_off(agent, guest, lv, point):
    uuid = guest['uuid']
    rec = interrupt(agent, uuid, 'power_off', instance={'uuid': uuid}, timeout=60,
                    meanwhile=shut_off(lv, uuid) if point == 'guest-off' else None)
    assert_record(rec, 'stopped', 4)
    settled(agent, uuid, 'stopped', 4)
    assert state(lv, uuid) == libvirt.VIR_DOMAIN_SHUTOFF
    rec = agent.call('power_on', instance={'uuid': uuid})
    assert_record(rec, 'active', 1)
    booted(agent, uuid)


def qemu_pid(agent, inst):
    with open(f"/run/libvirt/qemu/{inst['name']}.pid") as f:
        return int(f.read().strip())


def test_pause(agent, guest, lv):
    """A redelivered pause completes. QEMU is stopped (SIGSTOP) before the
    pause, so the agent is certainly inside it when killed; QEMU then goes on
    and libvirt finishes the pause the dead agent asked for."""
    uuid = guest['uuid']
    pid = qemu_pid(agent, guest)
    try:
        rec = interrupt(agent, uuid, 'pause', instance={'uuid': uuid},
                        before=lambda: os.kill(pid, signal.SIGSTOP),
                        meanwhile=lambda: os.kill(pid, signal.SIGCONT))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert_record(rec, 'paused', 3)
    settled(agent, uuid, 'paused', 3)
    assert state(lv, uuid) == libvirt.VIR_DOMAIN_PAUSED
    assert_record(agent.call('unpause', instance={'uuid': uuid}), 'active', 1)


def _rescue_defined(lv, uuid):
    def check():
        try:
            return 'disk.rescue' in lv.lookupByUUIDString(uuid).XMLDesc(0)
        except libvirt.libvirtError:
            return False
    return check


@pytest.mark.parametrize('point', ['at-start', 'rescue-defined'])
def test_rescue(agent, guest, lv, point):
    uuid = guest['uuid']
    rec = interrupt(agent, uuid, 'rescue', instance={'uuid': uuid},
                    rescue_password='intr-pw',
                    kill_when=_rescue_defined(lv, uuid)
                    if point == 'rescue-defined' else None)
    assert_record(rec, 'rescued', 1)
    settled(agent, uuid, 'rescued', 1)
    assert state(lv, uuid) == libvirt.VIR_DOMAIN_RUNNING
    assert _rescue_defined(lv, uuid)()
    booted(agent, uuid)
    rec = agent.call('unrescue', instance={'uuid': uuid})
    assert_record(rec, 'active', 1)
    assert not _rescue_defined(lv, uuid)()
    booted(agent, uuid)


@pytest.mark.parametrize('point', ['at-start', 'domain-defined'])
def test_spawn(agent, lv, point):
    inst = agent.make_instance('intrsp')
    uuid = inst['uuid']
    agent.instances[uuid] = inst        # the teardown removes it either way

    def defined():
        try:
            lv.lookupByUUIDString(uuid)
            return True
        except libvirt.libvirtError:
            return False
    rec = interrupt(agent, uuid, 'spawn', instance=inst,
                    image_meta={'id': 'test-root', 'disk_format': 'qcow2'},
                    network_info=[], block_device_info=None, admin_password=None,
                    injected_files=[],
                    kill_when=defined if point == 'domain-defined' else None)
    assert_record(rec, 'active', 1)
    assert rec['devices'] == {'root': 'vda', 'config_drive': 'vdz'}
    settled(agent, uuid, 'active', 1)
    assert state(lv, uuid) == libvirt.VIR_DOMAIN_RUNNING
    agent.wait_console(uuid, f'INSTANCE-UUID: {uuid}', timeout=120)
    assert_record(agent.destroy(inst), 'deleted', 0)
