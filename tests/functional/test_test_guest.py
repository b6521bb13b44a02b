"""The tiny test guest boots under libvirt/QEMU (TCG) and reports on its console.

Needs root, a running libvirtd (tools/start-services.sh) and the packages from
tools/install-system-packages.sh.  Skips otherwise, except in CI where it fails.
"""

import os
import subprocess
import time
import uuid

import pytest

try:
    from tests.functional.guest_fixture import (  # noqa: F401
        BOOT_MARKER, console_lines, destroy_quietly, domain_xml, guest_workdir,
        libvirt_conn, make_config_drive, make_qcow2, skip_or_fail, test_guest,
        wait_for_console, wait_for_shutoff)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from guest_fixture import (  # noqa: F401
        BOOT_MARKER, console_lines, destroy_quietly, domain_xml, guest_workdir,
        libvirt_conn, make_config_drive, make_qcow2, skip_or_fail, test_guest,
        wait_for_console, wait_for_shutoff)

BRIDGE = 'catestbr0'

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def _require_pycdlib():
    try:
        import pycdlib  # noqa: F401
    except ImportError:
        skip_or_fail('pycdlib is not installed (pip install pycdlib)')


@pytest.mark.parametrize('config_drive_bus', ['ide-cdrom', 'virtio-disk'])
def test_guest_boots_reads_config_drive_and_powers_off(
        test_guest, libvirt_conn, guest_workdir, config_drive_bus):
    _require_pycdlib()
    instance_uuid = str(uuid.uuid4())
    name = f'ca-test-guest-{instance_uuid[:8]}'
    disk = make_qcow2(guest_workdir / 'disk.qcow2')
    config = make_config_drive(
        guest_workdir / 'disk.config',
        {'uuid': instance_uuid, 'name': name, 'hostname': 'testguest'})
    console = guest_workdir / 'console.log'
    disks = [{'path': disk, 'target': 'vda', 'format': 'qcow2'}]
    if config_drive_bus == 'ide-cdrom':
        disks.append({'path': config, 'target': 'hda', 'bus': 'ide',
                      'device': 'cdrom', 'format': 'raw'})
        config_dev = 'sr0'
    else:
        disks.append({'path': config, 'target': 'vdb', 'format': 'raw',
                      'readonly': True})
        config_dev = 'vdb'
    xml = domain_xml(name, test_guest['kernel'], test_guest['initrd'],
                     'console=ttyS0 ca_poweroff', console, disks=disks)

    start = time.monotonic()
    try:
        libvirt_conn.createXML(xml, 0)
        log = wait_for_console(console, BOOT_MARKER, timeout=60)
        booted = time.monotonic() - start
        log = wait_for_console(console, 'POWERING-OFF', timeout=60)
        assert f'INSTANCE-UUID: {instance_uuid}' in log.splitlines(), log
        assert 'NO-CONFIG-DRIVE' not in log
        assert f'CONFIG-DRIVE: /dev/{config_dev}' in log.splitlines(), log
        blockdevs = console_lines(log, 'BLOCK-DEVICES:')
        assert len(blockdevs) == 1, log
        assert {'vda', config_dev} <= set(blockdevs[0].split()[1:]), log
        assert not console_lines(log, 'INSMOD-FAILED'), log
        assert wait_for_shutoff(libvirt_conn, name, timeout=60), (
            f'{name} did not shut off by itself within 60 s of POWERING-OFF')
        total = time.monotonic() - start
        log = wait_for_console(console, 'reboot: Power down', timeout=5)
        print(log)
        print(f'{config_drive_bus}: console marker after {booted:.1f}s, '
              f'shut off after {total:.1f}s')
    finally:
        destroy_quietly(libvirt_conn, name)


def _ip(*args, check=True):
    return subprocess.run(['ip', *args], check=check, timeout=30,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def test_bridge():
    if os.geteuid() != 0:
        skip_or_fail('creating a Linux bridge needs root')
    _ip('link', 'del', BRIDGE, check=False)
    _ip('link', 'add', BRIDGE, 'type', 'bridge')
    try:
        _ip('link', 'set', BRIDGE, 'up')
        yield BRIDGE
    finally:
        _ip('link', 'del', BRIDGE, check=False)


def test_two_guests_ping_over_bridge(test_guest, libvirt_conn, guest_workdir,
                                     test_bridge):
    guests = [
        ('10.77.0.1/24', '', '52:54:00:77:00:01'),
        ('10.77.0.2/24', ' ca_ping=10.77.0.1', '52:54:00:77:00:02'),
    ]
    names = []
    consoles = []
    try:
        for i, (ip, extra, mac) in enumerate(guests, 1):
            name = f'ca-test-ping{i}-{uuid.uuid4().hex[:8]}'
            console = guest_workdir / f'console{i}.log'
            # No config drive here: ca_cd_wait=1 skips most of the wait for one.
            xml = domain_xml(
                name, test_guest['kernel'], test_guest['initrd'],
                f'console=ttyS0 ca_cd_wait=1 ca_ip={ip}{extra}', console,
                interfaces=[{'bridge': test_bridge, 'mac': mac}])
            libvirt_conn.createXML(xml, 0)
            names.append(name)
            consoles.append(console)
        log1 = wait_for_console(consoles[0], 'READY', timeout=90)
        assert f'NET-CONFIGURED: eth0 10.77.0.1/24 {guests[0][2]}' in log1, log1
        log2 = wait_for_console(consoles[1], 'PING-', timeout=120)
        assert 'PING-OK 10.77.0.1' in log2.splitlines(), log2
        assert 'PING-FAIL' not in log2
        # Both guests stay up after their checks (no ca_poweroff).
        log2 = wait_for_console(consoles[1], 'READY', timeout=10)
        print(log1, log2, sep='\n')
        for name in names:
            assert libvirt_conn.lookupByName(name).isActive()
    finally:
        for name in names:
            destroy_quietly(libvirt_conn, name)


def test_guest_network_data_and_meta_from_config_drive(
        test_guest, libvirt_conn, guest_workdir, test_bridge):
    """network_data.json configures the NIC; meta ping/poweroff act like ca_*."""
    _require_pycdlib()
    _ip('addr', 'add', '10.78.0.1/24', 'dev', test_bridge)
    instance_uuid = str(uuid.uuid4())
    name = f'ca-test-netdata-{instance_uuid[:8]}'
    mac = 'fa:16:3e:78:00:02'
    network_data = {
        'links': [{'id': 'tap0', 'type': 'ethernet',
                   'ethernet_mac_address': mac, 'mtu': 1400}],
        # The agent's layout: routes (with their own netmask) inside the network.
        'networks': [{'id': 'network0', 'type': 'ipv4', 'link': 'tap0',
                      'ip_address': '10.78.0.2', 'netmask': '255.255.255.0',
                      'routes': [{'network': '0.0.0.0', 'netmask': '0.0.0.0',
                                  'gateway': '10.78.0.1'}],
                      'network_id': str(uuid.uuid4())}],
        'services': [{'type': 'dns', 'address': '10.78.0.1'}],
    }
    meta_data = {'uuid': instance_uuid, 'name': name, 'hostname': 'netdata',
                 'meta': {'ping': '10.78.0.1', 'poweroff': '1'}}
    config = make_config_drive(guest_workdir / 'disk.config', meta_data,
                               network_data=network_data)
    console = guest_workdir / 'console.log'
    xml = domain_xml(
        name, test_guest['kernel'], test_guest['initrd'],
        'root=/dev/vda console=ttyS0', console,
        disks=[{'path': config, 'target': 'vda', 'format': 'raw', 'readonly': True}],
        interfaces=[{'bridge': test_bridge, 'mac': mac}])
    try:
        libvirt_conn.createXML(xml, 0)
        log = wait_for_console(console, 'POWERING-OFF', timeout=120)
        print(log)
        lines = log.splitlines()
        assert f'INSTANCE-UUID: {instance_uuid}' in lines, log
        assert f'NET-CONFIGURED: eth0 10.78.0.2/24 {mac}' in lines, log
        assert 'NET-GATEWAY: 10.78.0.1' in lines, log
        assert 'PING-OK 10.78.0.1' in lines, log
        assert wait_for_shutoff(libvirt_conn, name, timeout=60)
    finally:
        destroy_quietly(libvirt_conn, name)


def test_guest_rescue_marker_and_acpi_shutdown(test_guest, libvirt_conn,
                                               guest_workdir):
    """ca_rescue prints RESCUE-MODE; virDomainShutdown (ACPI) powers it off."""
    name = f'ca-test-rescue-{uuid.uuid4().hex[:8]}'
    console = guest_workdir / 'console.log'
    disk = make_qcow2(guest_workdir / 'disk.qcow2')
    xml = domain_xml(
        name, test_guest['kernel'], test_guest['initrd'],
        'root=/dev/vda console=ttyS0 ca_rescue ca_cd_wait=1', console,
        disks=[{'path': disk, 'target': 'vda'}])
    try:
        dom = libvirt_conn.createXML(xml, 0)
        log = wait_for_console(console, 'READY', timeout=60)
        assert 'RESCUE-MODE' in log.splitlines(), log
        assert 'NO-CONFIG-DRIVE' in log.splitlines(), log
        start = time.monotonic()
        dom.shutdown()
        log = wait_for_console(console, 'ACPI-POWER-BUTTON', timeout=30)
        print(log)
        assert wait_for_shutoff(libvirt_conn, name, timeout=30)
        print(f'graceful shutdown took {time.monotonic() - start:.1f}s')
    finally:
        destroy_quietly(libvirt_conn, name)
