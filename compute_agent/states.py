"""Instance states (PROTOCOL.md section 4) and which operation may run when.

The table is the whole state machine: for each state-changing method, the
vm_states it may start from, the task_state while it runs, and the vm_state
and power_state it ends in.
"""

import collections

# power_state values
NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED, SUSPENDED = 0, 1, 3, 4, 6, 7

BUILDING, ACTIVE, STOPPED = 'building', 'active', 'stopped'
PAUSED_VM, SUSPENDED_VM, RESCUED = 'paused', 'suspended', 'rescued'
ERROR, DELETED = 'error', 'deleted'

Transition = collections.namedtuple(
    'Transition', 'allowed task end_vm_state end_power_state')

# None in ``allowed`` means "no record yet" (or a deleted one).
TRANSITIONS = {
    'spawn': Transition((None, DELETED, ERROR), 'spawning', ACTIVE, RUNNING),
    'rescue': Transition((ACTIVE,), 'rescuing', RESCUED, RUNNING),
    'unrescue': Transition((RESCUED,), 'unrescuing', ACTIVE, RUNNING),
    'reboot': Transition((ACTIVE,), 'rebooting', ACTIVE, RUNNING),
    'power_off': Transition((ACTIVE, RESCUED, ERROR), 'powering-off',
                            STOPPED, SHUTDOWN),
    'power_on': Transition((STOPPED,), 'powering-on', ACTIVE, RUNNING),
    'pause': Transition((ACTIVE,), 'pausing', PAUSED_VM, PAUSED),
    'unpause': Transition((PAUSED_VM,), 'unpausing', ACTIVE, RUNNING),
    'suspend': Transition((ACTIVE,), 'suspending', SUSPENDED_VM, SUSPENDED),
    'resume': Transition((SUSPENDED_VM,), 'resuming', ACTIVE, RUNNING),
    'destroy': Transition((BUILDING, ACTIVE, STOPPED, PAUSED_VM, SUSPENDED_VM,
                           RESCUED, ERROR), 'deleting', DELETED, NOSTATE),
    # Since 1.1. An end vm_state of None: back to the state it started from.
    'attach_volume': Transition((ACTIVE, STOPPED, PAUSED_VM), 'attaching_volume',
                                None, None),
    'detach_volume': Transition((ACTIVE, STOPPED, PAUSED_VM), 'detaching_volume',
                                None, None),
    'attach_interface': Transition((ACTIVE, STOPPED, PAUSED_VM), 'attaching_interface',
                                   None, None),
    'detach_interface': Transition((ACTIVE, STOPPED, PAUSED_VM), 'detaching_interface',
                                   None, None),
}

# A hard reboot may also start from these (nova allows it to revive a guest).
HARD_REBOOT_FROM = (ACTIVE, STOPPED, PAUSED_VM, SUSPENDED_VM, ERROR)

READ_ONLY = frozenset(('get_info', 'list_instances', 'get_console_output',
                       'get_vnc_console', 'get_host_stats', 'ping'))


def vm_state_for_power(vm_state, power_state):
    """vm_state implied by a power_state nobody asked for (lifecycle/sync)."""
    if vm_state in (ACTIVE, RESCUED) and power_state in (SHUTDOWN, CRASHED,
                                                         NOSTATE):
        return STOPPED
    if vm_state == ACTIVE and power_state == PAUSED:
        return PAUSED_VM
    if vm_state in (STOPPED, PAUSED_VM) and power_state == RUNNING:
        return ACTIVE
    return vm_state
