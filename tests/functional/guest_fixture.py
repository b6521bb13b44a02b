"""The tiny bootable test guest, and helpers to boot it with libvirt.

Import the fixtures into a test module to use them::

    from guest_fixture import libvirt_conn, test_guest  # noqa: F401

``test_guest`` builds the guest once per session with
``tools/build-test-guest.sh`` into ``$CA_TEST_CACHE/guest`` (default
``/var/tmp/compute-agent-test-cache/guest``) and returns
``{'kernel': path, 'initrd': path}``.  What the guest prints on its serial
console is documented at the top of that script.

Permissions: QEMU runs as ``libvirt-qemu``.  libvirt chowns the kernel,
initrd, disks and the serial log file themselves, but not their directories:
every directory on the path must be traversable by libvirt-qemu (``o+x``).
``tempfile.mkdtemp`` makes 0700 directories, so :func:`guest_workdir`
chmods its directory to 0755.

Outside CI (env ``CI`` unset) the tests skip when they cannot run here (not
root, no libvirtd); with ``CI`` set they fail instead.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / 'tools' / 'build-test-guest.sh'
LIBVIRT_URI = 'qemu:///system'
# Parent of per-test work dirs; must be traversable by libvirt-qemu.
WORK_ROOT = Path(os.environ.get('CA_TEST_WORKDIR', '/var/lib/compute-agent-test'))

BOOT_MARKER = 'COMPUTE-AGENT-TEST-GUEST BOOTED'


def cache_dir():
    return Path(os.environ.get('CA_TEST_CACHE', '/var/tmp/compute-agent-test-cache'))


def skip_or_fail(reason):
    """Skip the test, or fail it when running in CI (no silent skips)."""
    if os.environ.get('CI'):
        pytest.fail(f'{reason} (CI is set, so this is a failure, not a skip)')
    pytest.skip(reason)


def build_test_guest(outdir=None):
    """Build (or reuse) the test guest; return {'kernel': ..., 'initrd': ...}."""
    outdir = Path(outdir) if outdir else cache_dir() / 'guest'
    proc = subprocess.run(
        [str(BUILD_SCRIPT), str(outdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f'{BUILD_SCRIPT} failed with {proc.returncode}:\n{proc.stdout}')
    return {'kernel': str(outdir / 'vmlinuz'),
            'initrd': str(outdir / 'initrd.img')}


@pytest.fixture(scope='session')
def test_guest():
    """The test guest's kernel and initrd paths (built once per session)."""
    if os.geteuid() != 0:
        skip_or_fail('building and booting the test guest needs root')
    for tool in ('apt-get', 'dpkg', 'depmod'):
        if shutil.which(tool) is None:
            skip_or_fail(f'{tool} not found; run tools/install-system-packages.sh')
    return build_test_guest()


@pytest.fixture(scope='session')
def libvirt_conn():
    """A connection to qemu:///system (skip, or fail in CI, if unreachable)."""
    try:
        import libvirt
    except ImportError:
        skip_or_fail('libvirt-python is not installed')
    # Errors are raised as exceptions anyway; do not also print them.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as exc:
        skip_or_fail(f'libvirtd is not reachable at {LIBVIRT_URI}: {exc} '
                     '(run tools/start-services.sh)')
    try:
        yield conn
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


@pytest.fixture
def guest_workdir():
    """A fresh directory libvirt-qemu can traverse; removed afterwards."""
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(WORK_ROOT, 0o755)
    path = Path(tempfile.mkdtemp(prefix='guest-', dir=WORK_ROOT))
    os.chmod(path, 0o755)  # mkdtemp makes it 0700: QEMU could not open files in it
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_qcow2(path, size='16M'):
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(path), size],
                   check=True, timeout=60)
    return str(path)


def make_config_drive(path, meta_data, network_data=None, user_data=None):
    """Write an OpenStack-style config drive ISO (label config-2) to path.

    meta_data and network_data are dicts written as compact JSON to
    openstack/latest/{meta,network}_data.json; user_data is bytes.
    """
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge='1.09', vol_ident='config-2')
    iso.add_directory('/OPENSTAC', rr_name='openstack', joliet_path='/openstack')
    iso.add_directory('/OPENSTAC/LATEST', rr_name='latest',
                      joliet_path='/openstack/latest')
    files = [('META_DAT.JSO;1', 'meta_data.json',
              json.dumps(meta_data, separators=(',', ':')).encode())]
    if network_data is not None:
        files.append(('NETWORK_.JSO;1', 'network_data.json',
                      json.dumps(network_data, separators=(',', ':')).encode()))
    if user_data is not None:
        files.append(('USER_DAT.;1', 'user_data', bytes(user_data)))
    for iso_name, rr_name, data in files:
        iso.add_fp(io.BytesIO(data), len(data), f'/OPENSTAC/LATEST/{iso_name}',
                   rr_name=rr_name, joliet_path=f'/openstack/latest/{rr_name}')
    iso.write(str(path))
    iso.close()
    os.chmod(path, 0o644)
    return str(path)


def domain_xml(name, kernel, initrd, cmdline, console_log, disks=(),
               interfaces=(), memory_mib=128, domain_uuid=None):
    """XML of a TCG guest booting kernel/initrd with a file serial console.

    disks: dicts with 'path', 'target' (vda, hda, ...), optional 'bus'
    (virtio), 'device' (disk/cdrom), 'format' (qcow2/raw).
    interfaces: dicts with 'bridge', 'mac'.
    """
    devices = []
    for disk in disks:
        device = disk.get('device', 'disk')
        bus = disk.get('bus', 'virtio')
        fmt = disk.get('format', 'qcow2')
        readonly = '<readonly/>' if device == 'cdrom' or disk.get('readonly') else ''
        devices.append(
            f"<disk type='file' device={quoteattr(device)}>"
            f"<driver name='qemu' type={quoteattr(fmt)}/>"
            f"<source file={quoteattr(disk['path'])}/>"
            f"<target dev={quoteattr(disk['target'])} bus={quoteattr(bus)}/>"
            f"{readonly}</disk>")
    for nic in interfaces:
        devices.append(
            "<interface type='bridge'>"
            f"<source bridge={quoteattr(nic['bridge'])}/>"
            f"<mac address={quoteattr(nic['mac'])}/>"
            "<model type='virtio'/></interface>")
    devices.append(
        f"<serial type='file'><source path={quoteattr(str(console_log))}/>"
        "<target port='0'/></serial>")
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <uuid>{domain_uuid or uuid.uuid4()}</uuid>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {''.join(devices)}
  </devices>
</domain>
"""


def read_console(path):
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'replace').replace('\r', '')
    except FileNotFoundError:
        return ''


def wait_for_console(path, text, timeout=60.0, interval=0.2):
    """Wait until the console log at path contains text; return the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = read_console(path)
        if text in log:
            return log
        if time.monotonic() >= deadline:
            tail = '\n'.join(log.splitlines()[-40:])
            raise AssertionError(
                f'{text!r} not on the console {path} within {timeout}s; '
                f'last lines:\n{tail}')
        time.sleep(interval)


def console_lines(log, prefix):
    """Lines of the console log starting with prefix."""
    return [line for line in log.splitlines() if line.startswith(prefix)]


def domain_gone_or_shutoff(conn, name):
    import libvirt

    try:
        dom = conn.lookupByName(name)
        state, _reason = dom.state()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return True  # a transient domain is gone once it is shut off
        raise
    return state == libvirt.VIR_DOMAIN_SHUTOFF


def wait_for_shutoff(conn, name, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while not domain_gone_or_shutoff(conn, name):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def destroy_quietly(conn, name):
    """Destroy (and undefine, if persistent) domain name if it exists."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError:
        pass


# Where tools/start-services.sh keeps libvirtd's pid, log and markers.
LIBVIRTD_PIDFILE = '/run/libvirtd.pid'
SERVICES_LOG_DIR = os.environ.get('CA_SERVICES_LOG_DIR', '/var/log/compute-agent-services')
SERVICES_STATE_DIR = os.environ.get('CA_SERVICES_STATE_DIR', '/run/compute-agent-services')


def pid_running(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def restart_libvirtd():
    """Stop libvirtd and start it again the way tools/start-services.sh does."""
    stop_libvirtd()
    start_libvirtd()


def stop_libvirtd():
    """SIGTERM libvirtd (SIGKILL after 15 s); its guests keep running."""
    try:
        with open(LIBVIRTD_PIDFILE) as f:
            pid = int(f.read().strip())
    except (FileNotFoundError, ValueError):
        skip_or_fail(f'no libvirtd pid in {LIBVIRTD_PIDFILE}')
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while pid_running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def start_libvirtd():
    """Start libvirtd as tools/start-services.sh does; wait until it answers."""
    os.makedirs(SERVICES_LOG_DIR, exist_ok=True)
    with open(os.path.join(SERVICES_LOG_DIR, 'libvirtd.log'), 'ab') as log:
        # setsid -f: detached from the test session, like `setsid tini ... &`.
        subprocess.run(['setsid', '-f', 'tini', '-s', '--', 'libvirtd'],
                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                       check=True, timeout=10)
    deadline = time.monotonic() + 60
    while subprocess.run(['virsh', '-c', 'qemu:///system', 'list'], capture_output=True,
                         timeout=15, check=False).returncode != 0:
        assert time.monotonic() < deadline, 'libvirtd did not come back within 60 s'
        time.sleep(0.2)
    # Keep tools/stop-services.sh able to stop the new one.
    if os.path.exists(os.path.join(SERVICES_STATE_DIR, 'libvirtd')):
        with open(LIBVIRTD_PIDFILE) as f:
            new = f.read().strip()
        with open(f'/proc/{new}/stat') as f:
            tini = f.read().rsplit(')', 1)[1].split()[1]
        with open(os.path.join(SERVICES_STATE_DIR, 'libvirtd.tini.pid'), 'w') as f:
            f.write(tini + '\n')
