"""Instance files holding secrets stay private, and the guest still boots.

The config drive carries admin_pass: it is written 0600 root-owned. QEMU runs
as libvirt-qemu; libvirt's DAC driver (dynamic_ownership, the qemu.conf
default) hands the disk to that user while the guest runs and gives it back
afterwards. Checked with a real spawn on qemu:///system (TCG): the guest
reads its config drive, and an unprivileged user cannot read the file either
while it runs or after.
"""

import os
import pwd
import subprocess

import libvirt
import pytest

try:
    from tests.functional.guest_fixture import test_guest  # noqa: F401
    from tests.functional.driver_fixtures import (  # noqa: F401
        IMAGE_META, driver, env, events, inst_dir, make_instance, planner,
        wait_console)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from guest_fixture import test_guest  # noqa: F401
    from driver_fixtures import (  # noqa: F401
        IMAGE_META, driver, env, events, inst_dir, make_instance, planner,
        wait_console)

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
PASSWORD = 'correct horse battery'


def _unprivileged_can_read(path):
    """Whether ``nobody`` can open ``path`` (every directory on the way is
    searchable by others, as QEMU needs)."""
    proc = subprocess.run(['setpriv', '--reuid=nobody', '--regid=nogroup',
                           '--clear-groups', 'cat', path],
                          capture_output=True, timeout=30)
    return proc.returncode == 0


def test_config_drive_is_private_and_the_guest_reads_it(env, driver):
    inst = make_instance('ca-files')
    qemu_uid = pwd.getpwnam('libvirt-qemu').pw_uid
    try:
        driver.spawn(planner(driver).spawn(inst, IMAGE_META, [], None,
                                           admin_password=PASSWORD))
        path = os.path.join(inst_dir(env, inst), 'disk.config')
        # The guest found its config drive and read meta_data.json from it.
        wait_console(env, inst, 'INSTANCE-UUID: %s' % inst['uuid'])
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o600, oct(st.st_mode)
        assert st.st_uid == qemu_uid          # DAC: QEMU's while running
        assert not _unprivileged_can_read(path)
        # Control: the same user reads a 0644 file next to it.
        assert _unprivileged_can_read(os.path.join(inst_dir(env, inst), 'kernel'))
        with open(path, 'rb') as f:           # the secret really is in it
            assert PASSWORD.encode() in f.read()

        driver.power_off(inst)
        conn = libvirt.open('qemu:///system')
        try:
            assert conn.lookupByUUIDString(inst['uuid']).state()[0] == \
                libvirt.VIR_DOMAIN_SHUTOFF
        finally:
            conn.close()
        st = os.stat(path)
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600
        assert not _unprivileged_can_read(path)
    finally:
        driver.destroy(inst, [], None)
