"""One-guest helpers of the driver: state mapping, waiting, XML, console.

Kept apart from ``driver`` so the driver reads as the sequence of steps of
each operation; everything here works on one ``virDomain``, its XML or one
of its files.
"""

import time

import libvirt

from compute_agent import exception
from compute_agent.states import (
    CRASHED, NOSTATE, PAUSED, RUNNING, SHUTDOWN, SUSPENDED)


# libvirt domain state -> power state (docs: protocol-states).
LIBVIRT_POWER_STATE = {
    libvirt.VIR_DOMAIN_NOSTATE: NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: RUNNING,   # running, waiting on I/O
    libvirt.VIR_DOMAIN_PAUSED: PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: SHUTDOWN,  # shutting down: still going down
    libvirt.VIR_DOMAIN_SHUTOFF: SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: SUSPENDED,
}

UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                  | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
# SECURE keeps a VNC password, so the XML restored by unrescue is complete.
INACTIVE_XML = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
POLL = 0.2


def power_state(dom):
    """Power state (docs: protocol-states) of ``dom``; SHUTOFF with a managed save is SUSPENDED."""
    state, _reason = dom.state()
    if state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0):
        return SUSPENDED
    return LIBVIRT_POWER_STATE.get(state, NOSTATE)


def libvirt_state(dom):
    return dom.state()[0]


def is_no_domain(exc):
    return (isinstance(exc, libvirt.libvirtError)
            and exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN)


def wait_for(dom, states, timeout, what='state'):
    """Wait until ``dom``'s libvirt state is one of ``states``; True if so.

    Polled, not event-driven: state changes of a guest take 0.1-1 s and the
    events are the manager's, so polling keeps the driver self-contained.
    """
    deadline = time.monotonic() + timeout
    while True:
        if libvirt_state(dom) in states:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def wait_running(dom, timeout=60):
    """create() returns a running guest; wait a little in case it did not."""
    if not wait_for(dom, (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED),
                    timeout):
        raise exception.AgentError(
            'Domain %s did not reach RUNNING within %ss (state %s)'
            % (dom.name(), timeout, libvirt_state(dom)))


def acpi_shutdown(dom):
    """Press the guest's ACPI power button.

    Never through the guest agent: with flags 0 libvirt prefers a connected
    one, so a hung guest agent would hold a power-off, reboot or rebuild
    for its whole response timeout. Domain types without ACPI (lxc, and
    test:///default) refuse the flag and get libvirt's own choice.
    """
    try:
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        dom.shutdown()


def destroy_if_active(dom, attempts=3):
    """Hard stop; a guest that stopped meanwhile is not an error.

    QEMU can take a moment to die on a loaded host, and libvirt then fails
    with "Failed to terminate process ... Device or resource busy"
    (SYSTEM_ERROR): asking again is what works.
    """
    for attempt in range(attempts):
        try:
            if dom.isActive():
                dom.destroy()
            return
        except libvirt.libvirtError as e:
            code = e.get_error_code()
            if code == libvirt.VIR_ERR_OPERATION_INVALID:
                return    # "domain is not running"
            if code != libvirt.VIR_ERR_SYSTEM_ERROR or attempt == attempts - 1:
                raise
            time.sleep(1)


def undefine(dom):
    """Undefine with its managed save image, NVRAM and snapshot metadata."""
    try:
        dom.undefineFlags(UNDEFINE_FLAGS)
    except libvirt.libvirtError as e:
        if is_no_domain(e):
            return
        # Drivers without NVRAM/snapshot support (test:///, older libvirt)
        # reject those flags; the managed save image is the one that matters.
        if e.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT,
                                      libvirt.VIR_ERR_INVALID_ARG):
            raise
        if dom.hasManagedSaveImage(0):
            dom.managedSaveRemove(0)
        dom.undefine()
