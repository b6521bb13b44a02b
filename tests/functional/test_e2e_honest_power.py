"""Honest power reports and a bounded console, through the real agent on QEMU.

- libvirtd stopped under a running guest: one ``power.unknown`` report
  (power_state 0, vm_state kept), never a ``stopped`` one; once libvirtd is
  back, a ``power.sync`` puts the record right (docs: protocol, reports).
- A guest that reboots itself is not reported stopped.
- A guest that writes 50 MiB to its serial console leaves at most
  ``[libvirt] console_log_max_bytes`` on disk, and ``get_console_output``
  shows its last line.

This module stops the machine's libvirtd for a few seconds: the guests keep
running (QEMU does not depend on libvirtd) and the test starts it again.
"""

import os
import time

import pytest

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        agent, test_guest, wait_until)
    from tests.functional.guest_fixture import start_libvirtd, stop_libvirtd
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_fixture import agent, test_guest, wait_until  # noqa: F401
    from guest_fixture import start_libvirtd, stop_libvirtd

pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(600)]

FLOOD_MIB = 50
STOP_DELAY = 4          # [libvirt] stopped_event_delay for this agent


@pytest.fixture(scope='module')
def honest(agent):
    """The module's agent with a short stop debounce."""
    agent.write_config(libvirt={'stopped_event_delay': STOP_DELAY,
                                'virt_type': 'qemu',
                                'connection_uri': 'qemu:///system',
                                'wait_soft_reboot_seconds': 30,
                                'connect_retries': 30,
                                'connect_retry_interval': 0.5})
    agent.stop()
    agent.start()
    return agent


def _events(agent, uuid, since):
    return [(r['event'], r['vm_state'], r['power_state'])
            for r in agent.reports.states(uuid, since)]


def test_libvirtd_down_reports_unknown_never_stopped(honest):
    agent = honest
    inst, rec = agent.spawn(label='unknown')
    uuid = inst['uuid']
    assert (rec['vm_state'], rec['power_state']) == ('active', 1)
    before = agent.get_info(uuid)['power_checked_at']
    assert before
    since = agent.reports.mark()
    stop_libvirtd()
    try:
        unknown = agent.reports.wait(
            lambda r: r.get('instance_uuid') == uuid
            and r.get('event') == 'power.unknown', 30, 'power.unknown', since)
        assert (unknown['vm_state'], unknown['power_state']) == ('active', 0)
        record = agent.get_info(uuid)
        assert (record['vm_state'], record['power_state']) == ('active', 0)
        # Further syncs while libvirtd is away say nothing more.
        checked = record['power_checked_at']
        mark = agent.reports.mark()
        time.sleep(5)       # two more sync periods
        assert _events(agent, uuid, mark) == []
        assert agent.get_info(uuid)['power_checked_at'] == checked
    finally:
        start_libvirtd()
    synced = agent.reports.wait(
        lambda r: r.get('instance_uuid') == uuid and r.get('event') == 'power.sync',
        60, 'power.sync', since)
    assert (synced['vm_state'], synced['power_state']) == ('active', 1)
    events = _events(agent, uuid, since)
    assert all(vm == 'active' for _, vm, _ in events), events
    assert [e for e, _, _ in events] == ['power.unknown', 'power.sync']
    assert agent.get_info(uuid)['power_checked_at'] > before
    agent.destroy(inst)


def test_guest_rebooting_itself_is_not_reported_stopped(honest):
    agent = honest
    since = agent.reports.mark()
    inst, _ = agent.spawn(label='reboot', metadata={'reboot_once': '1'})
    uuid = inst['uuid']
    agent.wait_console(uuid, 'REBOOTED-ONCE', timeout=120)
    agent.wait_console(uuid, '\nREADY', timeout=60)
    # Longer than the debounce: a stop, had one been seen, would be reported.
    time.sleep(STOP_DELAY + 3)
    events = _events(agent, uuid, since)
    assert [e for e, _, _ in events] == ['spawn.start', 'spawn.end'], events
    assert agent.get_info(uuid)['vm_state'] == 'active'
    # A new QEMU process (hard reboot) appends to the same log.
    agent.call('reboot', instance={'uuid': uuid}, reboot_type='HARD')
    wait_until(lambda: agent.console(uuid).count('TEST-GUEST BOOTED') == 3, 60,
               'three boots in one console log')
    agent.destroy(inst)


def _console_bytes(agent, inst):
    path = agent.instance_dir(inst)
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
               if n == 'console.log' or n.startswith('console.log.'))


def test_console_log_is_bounded(honest):
    agent = honest
    inst, _ = agent.spawn(label='flood', metadata={'flood': str(FLOOD_MIB)})
    uuid = inst['uuid']
    bound = 8 * 1024 * 1024         # console_log_max_bytes' default
    peak = 0

    def done():
        nonlocal peak
        peak = max(peak, _console_bytes(agent, inst))
        return 'FLOOD-DONE' in agent.console(uuid, tail_lines=5)
    wait_until(done, 500, 'the guest to write %d MiB' % FLOOD_MIB, interval=1)
    out = agent.wait_console(uuid, '\nREADY', timeout=30)
    assert out.rstrip('\n').splitlines()[-1] == 'READY'
    assert 'FLOOD-DONE %d' % FLOOD_MIB in out
    assert 0 < peak <= bound
    assert _console_bytes(agent, inst) <= bound
    rotated = [n for n in os.listdir(agent.instance_dir(inst))
               if n.startswith('console.log.')]
    assert rotated, 'virtlogd never rotated the log'
    agent.destroy(inst)
