"""hotplug.detach: never trusts the return code, waits for the live XML.

A stand-in domain here (its live XML changes when the test says the guest
let the device go); the real thing, a guest that ignores ACPI, is in
tests/functional/test_e2e_volumes.py.
"""

import libvirt
import pytest

from compute_agent.virt import hotplug

DISK = ("<disk type='file' device='disk'><source file='/v'/>"
        "<target dev='vdb' bus='virtio'/><serial>vol</serial></disk>")


class FakeDomain:
    def __init__(self, releases=True, running=True, error=None):
        self.live = [DISK]
        self.config = [DISK]
        self.releases = releases
        self.running = running
        self.error = error
        self.calls = []

    def state(self):
        return (libvirt.VIR_DOMAIN_RUNNING if self.running else libvirt.VIR_DOMAIN_SHUTOFF, 0)

    def XMLDesc(self, flags):
        disks = self.config if flags & libvirt.VIR_DOMAIN_XML_INACTIVE else self.live
        return "<domain><devices>%s</devices></domain>" % ''.join(disks)

    def detachDeviceFlags(self, xml, flags):
        self.calls.append(flags)
        if self.error and flags == hotplug.LIVE:
            err = libvirt.libvirtError(self.error)
            err.err = (libvirt.VIR_ERR_OPERATION_FAILED, 0, self.error) + (None,) * 6
            raise err
        if flags == hotplug.LIVE and self.releases:
            self.live = []          # the guest let it go
        if flags == hotplug.CONFIG:
            self.config = []


def find(xml):
    return hotplug.find_disk(xml, 'vdb')


def test_detach_waits_for_the_live_xml_then_changes_the_config():
    dom = FakeDomain()
    hotplug.detach(dom, find, timeout=2)
    assert dom.calls == [hotplug.LIVE, hotplug.CONFIG]
    assert dom.live == dom.config == []


def test_a_guest_that_keeps_the_device_fails_and_the_config_is_untouched():
    dom = FakeDomain(releases=False)       # detach "succeeds", the device stays
    with pytest.raises(hotplug.HotplugError, match='did not release'):
        hotplug.detach(dom, find, timeout=0.3)
    assert dom.calls == [hotplug.LIVE]
    assert dom.live == dom.config == [DISK]


def test_a_repeated_request_waits_again():
    dom = FakeDomain(error='device already in the process of unplug')
    with pytest.raises(hotplug.HotplugError):
        hotplug.detach(dom, find, timeout=0.2)
    assert dom.config == [DISK]


def test_stopped_guest_only_changes_the_config_and_repeats_are_harmless():
    dom = FakeDomain(running=False)
    hotplug.detach(dom, find, timeout=1)
    hotplug.detach(dom, find, timeout=1)
    assert dom.calls == [hotplug.CONFIG]


def test_machine_without_hotplug_names_the_reason():
    class NoHotplug(FakeDomain):
        def attachDeviceFlags(self, xml, flags):
            err = libvirt.libvirtError("Bus 'pci.0' does not support hotplugging.")
            err.err = (libvirt.VIR_ERR_OPERATION_FAILED, 0,
                       "Bus 'pci.0' does not support hotplugging.") + (None,) * 6
            raise err
    with pytest.raises(hotplug.HotplugError, match='machine type cannot take'):
        hotplug.attach(NoHotplug(), DISK)
