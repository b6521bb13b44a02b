"""The checked manager harness and helpers of the manager tests
(tests/unit/test_manager*.py): every report's shape, the report stream
per instance, libvirt's own view, and instances brought to a vm_state."""

import pytest

from compute_agent import states

try:
    from tests.unit import manager_fixtures as mf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf

S = states
HARD = {'reboot_type': 'HARD'}
SOFT = {'reboot_type': 'SOFT'}


@pytest.fixture
def h(tmp_path):
    harness = mf.Harness(tmp_path)
    harness.check_reports = True        # sequences and repeated states
    harness.check_repeats = True
    yield harness
    try:
        if harness.check_reports:
            check_report_stream(harness.notifier.reports,
                                harness.check_repeats)
    finally:
        harness.close()


# --- helpers -----------------------------------------------------------------

def triple(report_or_record):
    return (report_or_record['vm_state'], report_or_record['task_state'],
            report_or_record['power_state'])


def check_report(report, uuid, ctx=None):
    """One report's shape and values (docs: protocol-reports)."""
    assert set(report) == mf.REPORT_KEYS, report
    assert report['host'] == mf.HOST
    assert report['instance_uuid'] == uuid
    assert report['vm_state'] in mf.VM_STATES
    assert report['task_state'] in mf.TASK_STATES
    assert report['power_state'] in mf.POWER_STATES
    assert isinstance(report['sequence'], int)
    mf.parse_timestamp(report['timestamp'])
    if ctx is not None:
        assert report['request_id'] == ctx['request_id']
    error = report['error']
    assert error is None or (set(error) == {'class', 'message'}
                             and isinstance(error['message'], str))


def check_report_stream(reports, repeats=True):
    """Per instance: sequences strictly increase, and (``repeats``) no report
    repeats the (vm_state, task_state, power_state) of the one before it,
    but a refusal's ``<method>.error``, which carries them unchanged (docs:
    protocol-failure-unchanged)."""
    by_uuid = {}
    for r in reports:
        by_uuid.setdefault(r['instance_uuid'], []).append(r)
    for uuid, rs in by_uuid.items():
        seqs = [r['sequence'] for r in rs]
        assert seqs == sorted(set(seqs)), (uuid, seqs)
        for a, b in zip(rs, rs[1:]) if repeats else ():
            if not (b['event'].endswith('.error') and b['error']):
                assert triple(a) != triple(b), (uuid, a, b)


def new_reports(h, uuid, since):
    return h.notifier.for_uuid(uuid)[since:]


def expect_libvirt(h, uuid, power_state):
    """libvirt's own view of the domain agrees with ``power_state``."""
    if power_state == states.NOSTATE:
        assert h.domain(uuid) is None
        return
    assert h.libvirt_state(uuid) == mf.LIBVIRT_STATE[power_state]
    assert h.driver.get_power_state({'uuid': uuid}) == power_state


def bring_to(h, vm_state):
    """A new instance in ``vm_state`` (None: one that was never spawned)."""
    instance = mf.make_instance()
    if vm_state is None:
        return instance
    h.spawn(instance)
    if vm_state == states.PAUSED_VM:
        h.call('pause', instance=instance)
    elif vm_state == states.SUSPENDED_VM:
        h.call('suspend', instance=instance)
    elif vm_state == states.STOPPED:
        h.call('power_off', instance=instance)
    elif vm_state == states.RESCUED:
        h.call('rescue', instance=instance)
    elif vm_state == states.ERROR:
        # Only a failure after the guest was changed leaves error (docs:
        # protocol-failure-unchanged): the guest is restarted as it was and the record
        # says error, as a rescue whose boot failed leaves it.
        h.force_record(instance['uuid'], vm_state=states.ERROR,
                       error={'class': 'AgentError', 'message': 'forged'})
    elif vm_state == states.DELETED:
        h.call('destroy', instance=instance)
    elif vm_state == states.BUILDING:
        # Not reachable through requests (spawn holds the instance while it
        # builds); the table allows destroy from it, so forge the record.
        h.force_record(instance['uuid'], vm_state=states.BUILDING,
                       task_state=None)
    else:
        assert vm_state == states.ACTIVE
    if vm_state not in (states.DELETED,):
        assert h.info(instance['uuid'])['vm_state'] == vm_state
    return instance
