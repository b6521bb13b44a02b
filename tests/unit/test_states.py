"""The state machine's rules, as literal cases (the protocol docs sections 4-5).

The expectations are written out here, never read from ``states``' own
tables: a wrong table entry must fail a case.
"""

import pytest

from compute_agent import states

RUN, DONE, INVALID = states.RUN, states.DONE, None

# (operation, record vm_state or None, interrupted mark, verdict)
VERDICTS = [
    ('spawn', None, None, RUN),
    ('spawn', 'deleted', None, RUN),
    ('spawn', 'error', None, RUN),
    ('spawn', 'active', None, DONE),        # a repeated spawn is a success
    ('spawn', 'stopped', None, INVALID),
    ('spawn', 'rescued', None, INVALID),
    ('spawn', 'error', 'spawn', RUN),
    ('rescue', 'active', None, RUN),
    ('rescue', 'stopped', None, INVALID),
    ('rescue', 'rescued', None, INVALID),
    ('rescue', 'rescued', 'rescue', DONE),
    ('unrescue', 'rescued', None, RUN),
    ('unrescue', 'active', None, INVALID),
    ('unrescue', 'active', 'unrescue', DONE),
    ('reboot', 'active', None, RUN),
    ('reboot', 'stopped', None, INVALID),
    ('reboot', 'stopped', 'reboot', RUN),   # interrupted: finish it
    ('reboot', 'rescued', None, INVALID),
    ('reboot_hard', 'stopped', None, RUN),
    ('reboot_hard', 'paused', None, RUN),
    ('reboot_hard', 'suspended', None, RUN),
    ('reboot_hard', 'error', None, RUN),
    ('reboot_hard', 'rescued', None, INVALID),
    ('power_off', 'active', None, RUN),
    ('power_off', 'rescued', None, RUN),
    ('power_off', 'error', None, RUN),
    ('power_off', 'stopped', None, INVALID),
    ('power_off', 'stopped', 'power_off', DONE),
    ('power_off', 'stopped', 'pause', INVALID),
    ('power_on', 'stopped', None, RUN),
    ('power_on', 'active', None, INVALID),
    ('power_on', 'active', 'power_on', DONE),
    ('power_on', 'rescued', 'power_on', DONE),
    ('pause', 'active', None, RUN),
    ('pause', 'paused', None, INVALID),
    ('pause', 'paused', 'pause', DONE),
    ('unpause', 'paused', None, RUN),
    ('suspend', 'active', None, RUN),
    ('suspend', 'suspended', 'suspend', DONE),
    ('resume', 'suspended', None, RUN),
    ('resume', 'active', None, INVALID),
    ('destroy', 'building', None, RUN),
    ('destroy', 'error', None, RUN),
    ('destroy', 'rescued', None, RUN),
    ('destroy', None, None, INVALID),
    # 1.1 rebuild: from a running, stopped or failed guest
    ('rebuild', 'active', None, RUN),
    ('rebuild', 'stopped', None, RUN),
    ('rebuild', 'error', None, RUN),
    ('rebuild', 'paused', None, INVALID),
    ('rebuild', 'suspended', None, INVALID),
    ('rebuild', 'rescued', None, INVALID),
    ('rebuild', 'building', None, INVALID),
    ('rebuild', None, None, INVALID),
    ('rebuild', 'stopped', 'rebuild', RUN),     # interrupted: finish it
    ('rebuild', 'error', 'rebuild', RUN),
    # -- resize (1.1): from active only; confirm/revert from resized
    ('resize', 'active', None, RUN),
    ('resize', 'stopped', None, INVALID),
    ('resize', 'resized', None, INVALID),
    ('resize', 'paused', None, INVALID),
    ('resize', 'rescued', None, INVALID),
    ('resize', 'error', None, INVALID),
    ('resize', 'active', 'resize', RUN),        # rolled back: run it again
    ('resize', 'resized', 'resize', DONE),
    ('confirm_resize', 'resized', None, RUN),
    ('confirm_resize', 'active', None, INVALID),
    ('confirm_resize', 'active', 'confirm_resize', DONE),  # recovery finished it
    ('confirm_resize', 'active', 'revert_resize', INVALID),
    ('revert_resize', 'resized', None, RUN),
    ('revert_resize', 'active', None, INVALID),
    ('revert_resize', 'active', 'revert_resize', DONE),
    ('revert_resize', 'stopped', None, INVALID),
    ('destroy', 'resized', None, RUN),
    ('rescue', 'resized', None, INVALID),
    ('reboot_hard', 'resized', None, INVALID),
    ('attach_volume', 'resized', None, INVALID),
    # -- end of resize
]


@pytest.mark.parametrize('op,vm_state,mark,expected', VERDICTS)
def test_verdict(op, vm_state, mark, expected):
    assert states.verdict(op, vm_state, mark) == expected


# (operation, start vm_state, guest rescued, end vm_state, task_state)
ENDS = [
    ('spawn', None, False, 'active', 'spawning'),
    ('rescue', 'active', False, 'rescued', 'rescuing'),
    ('unrescue', 'rescued', False, 'active', 'unrescuing'),
    ('reboot', 'active', False, 'active', 'rebooting'),
    ('reboot', 'active', True, 'rescued', 'rebooting'),
    ('reboot_hard', 'stopped', False, 'active', 'rebooting_hard'),
    ('reboot_hard', 'stopped', True, 'rescued', 'rebooting_hard'),
    ('power_off', 'rescued', True, 'stopped', 'powering-off'),
    ('power_on', 'stopped', False, 'active', 'powering-on'),
    ('power_on', 'stopped', True, 'rescued', 'powering-on'),
    ('pause', 'active', False, 'paused', 'pausing'),
    ('unpause', 'paused', False, 'active', 'unpausing'),
    ('suspend', 'active', False, 'suspended', 'suspending'),
    ('resume', 'suspended', False, 'active', 'resuming'),
    ('destroy', 'error', False, 'deleted', 'deleting'),
    # -- resize
    ('resize', 'active', False, 'resized', 'resize_migrating'),
    ('confirm_resize', 'resized', False, 'active', 'resize_confirming'),
    ('revert_resize', 'resized', False, 'active', 'resize_reverting'),
    ('destroy', 'resized', False, 'deleted', 'deleting'),
    # -- end of resize
]


# (operation, its task states in order: one step each)
STEPS = [
    ('resize', ('resize_migrating', 'resize_finish')),
    ('confirm_resize', ('resize_confirming',)),
    ('revert_resize', ('resize_reverting',)),
    ('reboot', ('rebooting',)),
    ('attach_volume', ('attaching_volume',)),
]


@pytest.mark.parametrize('op,tasks', STEPS)
def test_task_states_of_each_step(op, tasks):
    tr = states.TRANSITIONS[op]
    assert (tr.task,) + tr.then == tasks
    for task in tasks:      # a restart in any step is matched to the operation
        assert states.TASK_OPERATION[task] == op


@pytest.mark.parametrize('op,start,rescued,end,task', ENDS)
def test_end_and_task(op, start, rescued, end, task):
    assert states.end_vm_state(op, start, rescued) == end
    assert states.TRANSITIONS[op].task == task


# rebuild ends as its guest is at the end: (start, power_state at the end, end)
REBUILD_ENDS = [
    ('active', 1, 'active'),
    ('stopped', 4, 'stopped'),
    ('error', 1, 'active'),        # revived
    ('stopped', 1, 'active'),      # an interrupted rebuild's redelivery
    ('active', 0, 'error'),        # no domain at the end: nothing fits
]


@pytest.mark.parametrize('start,power,end', REBUILD_ENDS)
def test_rebuild_ends_as_its_guest_is(start, power, end):
    assert states.end_vm_state('rebuild', start, False, power) == end
    assert states.TRANSITIONS['rebuild'].task == 'rebuilding'


def test_operation_of_a_request():
    assert states.operation('reboot', {'reboot_type': 'HARD'}) == 'reboot_hard'
    assert states.operation('reboot', {'reboot_type': 'SOFT'}) == 'reboot'
    assert states.operation('reboot', None) == 'reboot'
    assert states.operation('pause', {}) == 'pause'


def test_an_operation_may_end_where_it_started(monkeypatch):
    """Room for the 1.1 device operations: e.g. attach_volume, task
    attaching_volume, back to the vm_state it started from."""
    monkeypatch.setitem(states.TRANSITIONS, 'attach_volume', states.Transition(
        ('active', 'stopped', 'paused'), 'attaching_volume', states.PREVIOUS, None))
    for start in ('active', 'stopped', 'paused'):
        assert states.verdict('attach_volume', start) == RUN
        assert states.end_vm_state('attach_volume', start, False) == start
    assert states.verdict('attach_volume', 'rescued') is None


# (vm_state, power_state seen, rescued, vm_state after)
DRIFTS = [
    ('active', 4, False, 'stopped'),
    ('active', 6, False, 'stopped'),
    ('active', 0, False, 'stopped'),
    ('active', 3, False, 'paused'),
    ('active', 1, False, 'active'),
    ('active', 7, False, 'active'),         # suspends are asked for
    ('rescued', 4, True, 'stopped'),
    ('rescued', 3, True, 'rescued'),
    ('stopped', 1, False, 'active'),
    ('stopped', 1, True, 'rescued'),        # started behind our back, rescued
    ('paused', 1, False, 'active'),
    ('suspended', 1, False, 'suspended'),
    ('error', 1, False, 'error'),
    ('error', 4, False, 'error'),
]


@pytest.mark.parametrize('vm_state,power,rescued,expected', DRIFTS)
def test_vm_state_for_power(vm_state, power, rescued, expected):
    assert states.vm_state_for_power(vm_state, power, rescued) == expected


# (task_state left, power_state after the recovery action, rescued,
#  (vm_state, error class or None))
RECOVERED = [
    ('spawning', 1, False, ('active', None)),
    ('spawning', 4, False, ('error', 'AgentRestarted')),
    ('spawning', 0, False, ('error', 'AgentRestarted')),
    ('deleting', 0, False, ('deleted', None)),
    ('rebooting', 1, False, ('active', None)),
    ('rebooting', 1, True, ('rescued', None)),
    ('powering-off', 4, False, ('stopped', None)),
    ('powering-off', 1, True, ('rescued', None)),
    ('pausing', 3, False, ('paused', None)),
    ('suspending', 7, False, ('suspended', None)),
    ('rescuing', 1, False, ('active', None)),
    ('powering-on', 0, False, ('error', 'AgentRestarted')),
    ('rebuilding', 1, False, ('active', None)),
    ('rebuilding', 4, False, ('stopped', None)),   # its redelivery starts it
    ('rebuilding', 0, False, ('error', 'AgentRestarted')),
    # -- resize: rolled back (resize) or finished (revert, confirm), running
    ('resize_migrating', 1, False, ('active', None)),
    ('resize_finish', 1, False, ('active', None)),
    ('resize_reverting', 1, False, ('active', None)),
    ('resize_confirming', 1, False, ('active', None)),
    ('resize_finish', 0, False, ('error', 'AgentRestarted')),
    # -- end of resize
]


@pytest.mark.parametrize('task,power,rescued,expected', RECOVERED)
def test_recovered(task, power, rescued, expected):
    vm_state, error = states.recovered(task, power, rescued)
    assert (vm_state, error and error['class']) == expected
    if error:
        assert task in error['message']


# (task_state, what recovery does to the guest first)
RECOVERY_ACTIONS = [
    ('spawning', None), ('deleting', 'destroy'), ('rescuing', 'unrescue'),
    ('unrescuing', 'unrescue'), ('rebooting', 'boot'), ('rebooting_hard', 'boot'),
    ('powering-on', 'boot'), ('powering-off', None), ('pausing', None),
    ('unpausing', None), ('suspending', None), ('resuming', None),
    ('rebuilding', None),
    # -- resize
    ('resize_migrating', 'revert_resize'), ('resize_finish', 'revert_resize'),
    ('resize_reverting', 'revert_resize'), ('resize_confirming', 'confirm_resize'),
]


@pytest.mark.parametrize('task,action', RECOVERY_ACTIONS)
def test_recovery_action(task, action):
    assert states.RECOVERY[task] == action
    tr = states.TRANSITIONS[states.TASK_OPERATION[task]]
    assert task in (tr.task,) + tr.then


# -- snapshot (1.1): two task states, recovery cancels the copy ----------------------

@pytest.mark.parametrize('task', ['image_snapshot', 'image_uploading'])
def test_snapshot_tasks_belong_to_snapshot_and_recovery_aborts_it(task):
    assert states.TASK_OPERATION[task] == 'snapshot'
    assert states.RECOVERY[task] == 'abort_snapshot'
    # After recovery the guest is where it was: its redelivery runs again.
    for vm_state in ('active', 'stopped', 'paused'):
        assert states.verdict('snapshot', vm_state, interrupted='snapshot') == states.RUN


def test_snapshot_row():
    tr = states.TRANSITIONS['snapshot']
    assert (tr.task, tr.then) == ('image_snapshot', ('image_uploading',))
    assert tr.end_vm_state == states.PREVIOUS and tr.end_power_state is None
    for vm_state in ('active', 'stopped', 'paused'):
        assert states.end_vm_state('snapshot', vm_state, False) == vm_state
    for vm_state in ('suspended', 'rescued', 'error', 'building', None):
        assert states.verdict('snapshot', vm_state) is None
