"""Real network storage for volume tests: a private tgtd and qemu-nbd exports.

``Tgtd`` runs ``tgtd -f`` (the userspace iSCSI target of package ``tgt``) on
127.0.0.1 with a private iSCSI port and a private management port, so it
never meets another tgtd on the machine; each ``add_lun`` is a target of its
own with one LUN backed by a file, optionally CHAP-protected. tgtd ignores
SIGTERM: ``stop`` deletes every target, then the system (``tgtadm --op
delete --mode system``), and kills it only if that did not end it.

``NbdServer`` is one ``qemu-nbd`` serving a raw file over a unix socket or
TCP (run with umask 0: QEMU, as libvirt-qemu, must connect to the socket).

Helpers write a marker at the start of a backing file (the test guest prints
the first line of each disk) and read what the guest wrote at byte 4096.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

MARKER_PREFIX = b'CA-MARKER '
GUEST_WRITE_OFFSET = 4096


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_backing_file(path, marker, size=8 << 20):
    """A raw file starting with ``CA-MARKER <marker>``; returns its path."""
    with open(path, 'wb') as f:
        f.write(MARKER_PREFIX + marker.encode() + b'\n')
        f.truncate(size)
    os.chmod(path, 0o666)
    return str(path)


def guest_write(path):
    """What the guest wrote at byte 4096 (its first line, or None)."""
    with open(path, 'rb') as f:
        f.seek(GUEST_WRITE_OFFSET)
        line = f.read(512).split(b'\n', 1)[0]
    return line.decode(errors='replace') if line.strip(b'\0') else None


class Tgtd:
    """A private tgtd on 127.0.0.1."""

    def __init__(self, workdir):
        self.workdir = str(workdir)
        self.port = free_port()
        self.control_port = 1000 + secrets.randbelow(30000)
        self.tag = secrets.token_hex(3)
        self.proc = None
        self.tids = []
        self.accounts = []
        self._next_tid = 1

    def _adm(self, *args, check=True):
        proc = subprocess.run(['tgtadm', '-C', str(self.control_port), '--lld', 'iscsi']
                              + list(args), capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise RuntimeError('tgtadm %s: %s' % (' '.join(args), proc.stderr or proc.stdout))
        return proc

    def start(self):
        if shutil.which('tgtd') is None:
            raise RuntimeError('tgtd not found (apt-get install tgt; '
                               'tools/install-system-packages.sh)')
        log = open(os.path.join(self.workdir, 'tgtd.log'), 'ab')
        self.proc = subprocess.Popen(
            ['tgtd', '-f', '-C', str(self.control_port),
             '--iscsi', 'portal=127.0.0.1:%d' % self.port],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while self._adm('--op', 'show', '--mode', 'sys', check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('tgtd did not start (see %s/tgtd.log)' % self.workdir)
            time.sleep(0.05)
        wait_port(self.port)
        return self

    @property
    def portal(self):
        return '127.0.0.1:%d' % self.port

    def add_lun(self, backing_file, chap=None):
        """A new target with LUN 1 = ``backing_file``; returns connection data.

        ``chap``: (user, password) required of initiators.
        """
        tid = self._next_tid
        self._next_tid += 1
        iqn = 'iqn.2026-12.test.compute-agent:%s-%d' % (self.tag, tid)
        self._adm('--op', 'new', '--mode', 'target', '--tid', str(tid), '-T', iqn)
        self.tids.append(tid)
        self._adm('--op', 'new', '--mode', 'logicalunit', '--tid', str(tid),
                  '--lun', '1', '-b', str(backing_file))
        self._adm('--op', 'bind', '--mode', 'target', '--tid', str(tid), '-I', 'ALL')
        data = {'target_portal': self.portal, 'target_iqn': iqn, 'target_lun': 1}
        if chap:
            user, password = chap
            if user not in self.accounts:
                self._adm('--op', 'new', '--mode', 'account', '--user', user,
                          '--password', password)
                self.accounts.append(user)
            self._adm('--op', 'bind', '--mode', 'account', '--tid', str(tid),
                      '--user', user)
            data.update(auth_method='CHAP', auth_username=user, auth_password=password)
        return data

    def stop(self):
        if self.proc is None:
            return
        for tid in self.tids:
            self._adm('--op', 'delete', '--mode', 'target', '--tid', str(tid),
                      '--force', check=False)
        self._adm('--op', 'delete', '--mode', 'system', check=False)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        for suffix in ('', '.lock'):    # its management socket outlives it
            try:
                os.unlink('/var/run/tgtd/socket.%d%s' % (self.control_port, suffix))
            except FileNotFoundError:
                pass


class NbdServer:
    """One qemu-nbd export of a raw file over a unix socket or TCP."""

    def __init__(self, workdir, image, export, tcp=False):
        self.image, self.export = str(image), export
        self.socket = None if tcp else os.path.join(str(workdir), 'nbd-%s.sock' % export)
        self.port = free_port() if tcp else None
        self.proc = None

    def start(self):
        where = (['-b', '127.0.0.1', '-p', str(self.port)] if self.port
                 else ['-k', self.socket])
        self.proc = subprocess.Popen(
            ['qemu-nbd', '--persistent', '--shared=4', '-x', self.export, '-f', 'raw']
            + where + [self.image],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, umask=0, start_new_session=True)
        deadline = time.monotonic() + 10
        if self.port:
            wait_port(self.port)
        else:
            while not os.path.exists(self.socket):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError('qemu-nbd did not start for %s' % self.image)
                time.sleep(0.05)
        return self

    def data(self):
        if self.port:
            return {'host': '127.0.0.1', 'port': self.port, 'export': self.export}
        return {'socket': self.socket, 'export': self.export}

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.socket and os.path.exists(self.socket):
            os.unlink(self.socket)
