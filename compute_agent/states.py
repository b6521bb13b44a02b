"""Instance states (docs: protocol-states, protocol-transitions) and which operation may run when.

The table is the whole state machine. For each state-changing operation:
the vm_states it may start from, the task_state while it runs, the vm_state
and power_state it ends in (and the vm_state when it boots a rescued
guest), the states in which it is already done; then what a restart does to
an operation it interrupted, and how a power state seen from outside moves
a vm_state. The manager applies these rules and special-cases no method.
"""

import collections

# power_state values (the only definition; virt/ imports them from here)
NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED, SUSPENDED = 0, 1, 3, 4, 6, 7

BUILDING, ACTIVE, STOPPED = 'building', 'active', 'stopped'
PAUSED_VM, SUSPENDED_VM, RESCUED = 'paused', 'suspended', 'rescued'
RESIZED, ERROR, DELETED = 'resized', 'error', 'deleted'

# An end vm_state: the vm_state the operation started from (for the 1.1
# device operations, e.g. attach_volume: any of active/stopped/paused,
# task attaching_volume, back to where it was).
PREVIOUS = 'previous'
# An end vm_state: the one the guest's power state at the end means
# (``at_rest``): ``active`` when it runs, ``stopped`` when it does not
# (rebuild: the guest ends as it was).
AS_POWERED = 'as powered'

Transition = collections.namedtuple(
    'Transition',
    'allowed task end_vm_state end_power_state rescued_end done_in then',
    defaults=(None, (), ()))
# allowed          start vm_states; None means "no record yet" (or a deleted one)
# task             the task_state while it runs
# end_vm_state     where it ends (PREVIOUS: where it started; AS_POWERED:
#                  what its end power state means)
# end_power_state  the power state libvirt shows at the end (NOSTATE: no domain)
# rescued_end      the end vm_state instead, when the guest it boots is rescued
# done_in          start vm_states in which it is a success without running
# then             task_states of its later steps, in order (an operation of
#                  several steps: the manager runs one step per task_state)

_ANY = (BUILDING, ACTIVE, STOPPED, PAUSED_VM, SUSPENDED_VM, RESCUED, RESIZED,
        ERROR)
_DEVICES_FROM = (ACTIVE, STOPPED, PAUSED_VM)

TRANSITIONS = {
    # A repeated spawn of an active instance is a success (docs: protocol-invalid-requests).
    'spawn': Transition((None, DELETED, ERROR), 'spawning', ACTIVE, RUNNING,
                        done_in=(ACTIVE,)),
    'rescue': Transition((ACTIVE,), 'rescuing', RESCUED, RUNNING),
    'unrescue': Transition((RESCUED,), 'unrescuing', ACTIVE, RUNNING),
    'reboot': Transition((ACTIVE,), 'rebooting', ACTIVE, RUNNING,
                         rescued_end=RESCUED),
    # A hard reboot may also revive a guest (as nova allows).
    'reboot_hard': Transition((ACTIVE, STOPPED, PAUSED_VM, SUSPENDED_VM, ERROR),
                              'rebooting_hard', ACTIVE, RUNNING,
                              rescued_end=RESCUED),
    'power_off': Transition((ACTIVE, RESCUED, ERROR), 'powering-off',
                            STOPPED, SHUTDOWN),
    # A rescued guest that was powered off boots rescued again.
    'power_on': Transition((STOPPED,), 'powering-on', ACTIVE, RUNNING,
                           rescued_end=RESCUED),
    'pause': Transition((ACTIVE,), 'pausing', PAUSED_VM, PAUSED),
    'unpause': Transition((PAUSED_VM,), 'unpausing', ACTIVE, RUNNING),
    'suspend': Transition((ACTIVE,), 'suspending', SUSPENDED_VM, SUSPENDED),
    'resume': Transition((SUSPENDED_VM,), 'resuming', ACTIVE, RUNNING),
    'destroy': Transition(_ANY, 'deleting', DELETED, NOSTATE),
    # 1.1: live on a running guest; the power state is not changed (None).
    'update_security_rules': Transition(
        (ACTIVE, STOPPED, PAUSED_VM, SUSPENDED_VM, RESCUED),
        'updating_security_rules', PREVIOUS, None),
    # 1.1 device operations: from a guest that is up, stopped or paused,
    # back to where it started; the power state is not changed (None).
    'attach_volume': Transition(_DEVICES_FROM, 'attaching_volume', PREVIOUS, None),
    'detach_volume': Transition(_DEVICES_FROM, 'detaching_volume', PREVIOUS, None),
    'attach_interface': Transition(_DEVICES_FROM, 'attaching_interface',
                                   PREVIOUS, None),
    'detach_interface': Transition(_DEVICES_FROM, 'detaching_interface',
                                   PREVIOUS, None),
    # 1.1 rebuild: a running guest runs again on its new root disk, a
    # stopped one stays stopped; one in error is rebuilt and started (as
    # nova's rebuild revives it): its end vm_state is what its power says.
    'rebuild': Transition((ACTIVE, STOPPED, ERROR), 'rebuilding', AS_POWERED,
                          None),
    # 1.1 snapshot: copy the root disk, then upload it; the guest's states
    # are not changed (a running guest keeps running).
    'snapshot': Transition(_DEVICES_FROM, 'image_snapshot', PREVIOUS, None,
                           then=('image_uploading',)),
    # -- resize (1.1, resize_ops.py): from a running guest only, so that
    # confirm and revert always end running (active). Two steps: the disks
    # (saved, grown) while the guest is down, then the guest on the new
    # flavor. Cold migration ends in RESIZED too and reuses confirm/revert.
    'resize': Transition((ACTIVE,), 'resize_migrating', RESIZED, RUNNING,
                         then=('resize_finish',)),
    'confirm_resize': Transition((RESIZED,), 'resize_confirming', ACTIVE,
                                 RUNNING),
    'revert_resize': Transition((RESIZED,), 'resize_reverting', ACTIVE,
                                RUNNING),
    # -- end of resize
    # 1.1 guest agent: inside a running guest, back to where it was.
    'set_admin_password': Transition((ACTIVE,), 'updating_password',
                                     PREVIOUS, None),
    # -- live migration: a running (or paused) guest moves to another host,
    # whose agent reports the end in the state it started from.
    'live_migrate': Transition((ACTIVE, PAUSED_VM), 'migrating', PREVIOUS, None),
    # -- end of live migration
    # -- cold migration (cold_migration_ops.py): the destination reports
    # the end, resized; confirm_resize/revert_resize are then sent there.
    'migrate': Transition((ACTIVE,), 'resize_migrating', RESIZED, RUNNING),
    # -- end of cold migration
}

# Requests that act on the operation running on their instance (they must
# not wait behind it): their own serialization lane.
ALONGSIDE = frozenset(('live_migrate_abort',))

# Requests that change nothing: no per-instance queue, no fsync'ed outcome.
READ_ONLY = frozenset(('get_info', 'list_instances', 'get_console_output',
                       'get_vnc_console', 'get_host_stats', 'ping',
                       # live migration crash settling: asked while the
                       # instance's own lane may wait on the asker
                       '_migration_status'))


def operation(method, args):
    """The TRANSITIONS key of a request (a hard reboot is its own)."""
    if method == 'reboot' and (args or {}).get('reboot_type') == 'HARD':
        return 'reboot_hard'
    return method


RUN, DONE = 'run', 'done'


def verdict(op, vm_state, interrupted=None):
    """RUN, DONE, or None (makes no sense: InstanceInvalidState).

    ``vm_state`` is None when there is no record. ``interrupted`` is the
    operation a restart interrupted (the record's mark, see ``recovered``):
    its redelivery runs again where the operation may start, is DONE where
    recovery already reached its end, and otherwise completes it from
    wherever recovery left the guest.
    """
    tr = TRANSITIONS[op]
    if vm_state in tr.done_in:
        return DONE
    if vm_state in tr.allowed:
        return RUN
    if interrupted == op and vm_state not in (None, DELETED):
        return DONE if vm_state in (tr.end_vm_state, tr.rescued_end) else RUN
    return None


def end_vm_state(op, start_vm_state, rescued, power_state=None):
    """The vm_state ``op`` ends in; ``power_state`` is the guest's at the
    end (for AS_POWERED rows; ``error`` when no vm_state fits it)."""
    tr = TRANSITIONS[op]
    if rescued and tr.rescued_end:
        return tr.rescued_end
    if tr.end_vm_state == AS_POWERED:
        return at_rest(power_state, rescued) or ERROR
    return start_vm_state if tr.end_vm_state == PREVIOUS else tr.end_vm_state


# --- power states seen from outside ---------------------------------------------

# The vm_state a power state means for a guest at rest.
POWER_VM_STATE = {RUNNING: ACTIVE, PAUSED: PAUSED_VM, SHUTDOWN: STOPPED,
                  CRASHED: STOPPED, SUSPENDED: SUSPENDED_VM}

# Which vm_states a change nobody asked for (lifecycle event, periodic sync)
# may move, and to which: a guest that stopped, paused itself or was started
# behind the agent's back. Suspended and error records are left alone.
DRIFT = {ACTIVE: (STOPPED, PAUSED_VM), RESCUED: (STOPPED,),
         STOPPED: (ACTIVE, RESCUED), PAUSED_VM: (ACTIVE, RESCUED)}


def at_rest(power_state, rescued=False):
    """The vm_state of an idle guest in ``power_state``; None if none fits
    (no domain)."""
    vm_state = POWER_VM_STATE.get(power_state)
    if vm_state == ACTIVE and rescued:
        return RESCUED
    return vm_state


def vm_state_for_power(vm_state, power_state, rescued=False):
    """vm_state implied by a power_state nobody asked for (lifecycle/sync)."""
    implied = STOPPED if power_state == NOSTATE else at_rest(power_state, rescued)
    return implied if implied in DRIFT.get(vm_state, ()) else vm_state


# --- restarts -------------------------------------------------------------------

# task_state a killed agent left -> what recovery does to the guest first:
#   'destroy'   finish the destroy (the record goes)
#   'unrescue'  put back the guest defined before the rescue, if it was
#               saved (an interrupted rescue is rolled back, its redelivery
#               rescues again; an interrupted unrescue is finished)
#   'boot'      start the guest (a reboot or power-on ends with it running)
#   'revert_resize'   put back the guest and disks saved before the resize
#               (an interrupted resize is rolled back, its redelivery resizes
#               again; an interrupted revert is finished)
#   'confirm_resize'  finish dropping what a revert would have needed
#   None        nothing; the record follows the guest's power state
RECOVERY = {
    'spawning': None, 'deleting': 'destroy', 'rescuing': 'unrescue',
    'unrescuing': 'unrescue', 'rebooting': 'boot', 'rebooting_hard': 'boot',
    'powering-on': 'boot', 'powering-off': None, 'pausing': None,
    'unpausing': None, 'suspending': None, 'resuming': None,
    # rebuild: nothing; its redelivery builds the new files again and
    # completes the swap (the record keeps whether to start the guest).
    'rebuilding': None,
    # snapshot: cancel its block copy, drop its temporary files; the guest
    # runs (or not) as it did, its redelivery snapshots again.
    'image_snapshot': 'abort_snapshot', 'image_uploading': 'abort_snapshot',
    # resize (1.1)
    'resize_migrating': 'revert_resize', 'resize_finish': 'revert_resize',
    'resize_reverting': 'revert_resize', 'resize_confirming': 'confirm_resize',
    # An interrupted migration is settled with the other agent after start
    # (migration_settle); recover skips it.
    'migrating': None,
}

# The operation of each task_state (the mark its redelivery is matched by).
TASK_OPERATION = {}
for _op, _tr in TRANSITIONS.items():
    for _task in (_tr.task,) + _tr.then:
        # Cold migration (issue 16): migrate shares resize_migrating with
        # resize (the contract's task states); the first row keeps it.
        TASK_OPERATION.setdefault(_task, _op)
del _op, _tr, _task


def recovered(task, power_state, rescued):
    """(vm_state, error) of a record whose ``task`` a restart interrupted,
    after the RECOVERY action, with the guest now in ``power_state``.

    A spawn counts only when its guest runs; anything without a guest to
    show for it is in error (its redelivery, or a new spawn, starts over).
    """
    if task == 'deleting':
        return DELETED, None
    vm_state = at_rest(power_state, rescued)
    if task == 'spawning' and power_state != RUNNING:
        vm_state = None
    if vm_state is None:
        return ERROR, {'class': 'AgentRestarted',
                       'message': 'the agent restarted during %s' % task}
    return vm_state, None
