"""Cold migration's disk copy and guest moves (mechanism; docs:
protocol-method-migrate). Mixed into ``LibvirtDriver``.

The channel: the source exports each stopped disk with its own one-shot
``qemu-nbd`` (read-only, one client at a time, bound to the source's
migration address on a random port) and the destination reads it with
``qemu-img convert``. The export demands TLS with a pre-shared key made
for this one migration (``tls-creds-psk``): the key goes to the
destination only inside the agents' own broker call, so no other host or
process that finds the port can read a byte (without the key qemu-nbd
refuses every option before TLS). The exports are stopped as soon as the
destination answered. Why not libvirt's own copy: libvirt copies disks
only for a running guest (``--copy-storage-all`` of a live migration);
cold migration must stop the guest first, and a flattened copy (the
export shows the guest's whole disk, backing file included) needs no
cached base image at the destination.
"""

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

from compute_agent import exception
from compute_agent import pause_points
from compute_agent.virt import disks
from compute_agent.virt.undo import Undo
from compute_agent.virt import guest

LOG = logging.getLogger(__name__)
PSK_USER = 'compute-agent'
EXPORT_NAME = 'disk'
START_TIMEOUT = 10
# The source's address as a peer sends it: goes into qemu's option string,
# so no ',' or '=' (another option) can ride along.
ADDRESS_RE = re.compile(r'^[A-Za-z0-9.:-]{1,255}$')
# Names of files a cold migration copies: disks, not sockets or logs.
COPIED_KINDS = ('root', 'ephemeral', 'swap', 'config', 'kernel', 'ramdisk',
                'iso')


def _free_port(address):
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _psk_dir(key):
    """A private directory holding ``keys.psk`` (qemu's PSK file)."""
    path = tempfile.mkdtemp(prefix='ca-coldmig-')
    with open(os.path.join(path, 'keys.psk'), 'x') as f:
        os.fchmod(f.fileno(), 0o600)
        f.write('%s:%s\n' % (PSK_USER, key))
    return path


def _wait_listening(uuid, address, port, proc):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise exception.MigrationError(
                uuid=uuid, reason='qemu-nbd exited: %s' % proc.stderr.read()[-300:])
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise exception.MigrationError(uuid=uuid,
                                   reason='qemu-nbd did not start listening')


class ColdMigration:
    """The cold-migration steps of one host's driver."""

    # -- source ------------------------------------------------------------------
    @contextlib.contextmanager
    def export_disks(self, plan, address):
        """Export the stopped guest's files; yields (psk key, [{name, fmt,
        port}]). Every export is stopped on leaving."""
        inst_dir = self._dir(plan.instance)
        key = secrets.token_hex(32)
        keydir = _psk_dir(key)
        procs, exports = [], []
        try:
            for f in plan.files:
                if f.kind not in COPIED_KINDS:
                    continue
                path = disks.safe_join(inst_dir, f.name, field='disk.name')
                if not os.path.exists(path):
                    continue
                # The planned format, never a probe: a raw disk whose guest
                # wrote a qcow2 header must not open a backing file here.
                fmt = f.fmt
                port = _free_port(address)
                # Dies with this thread (pdeathsig): an agent killed
                # mid-copy leaves no export holding the disk.
                proc = subprocess.Popen(
                    ['setpriv', '--pdeathsig', 'KILL', '--',
                     'qemu-nbd', '-r', '-t', '--shared=1', '-f', fmt,
                     '-x', EXPORT_NAME, '--bind', address, '--port', str(port),
                     '--object', 'tls-creds-psk,id=tls0,endpoint=server,'
                     'dir=' + keydir, '--tls-creds', 'tls0', path],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, text=True)
                procs.append(proc)
                _wait_listening(plan.instance['uuid'], address, port, proc)
                exports.append({'name': f.name, 'fmt': fmt, 'port': port})
            yield key, exports
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(keydir, ignore_errors=True)

    def release_cold_source(self, instance, network_info, block_device_info):
        """After the destination took over: the stopped domain undefined,
        filters, VIFs, volumes released; the files stay (revert's copy)."""
        self.cleanup_migrated(instance, network_info, block_device_info,
                              remove_files=False)

    def restart_cold_source(self, plan):
        """Revert: the old guest defined again on the kept files and booted."""
        xml = plan.xml()
        undo = Undo()
        try:
            self._connect_volumes(plan.volumes, undo)
            self._call(lambda c: c.defineXML(xml))
            self._boot(plan.instance, plan.vifs)
        except BaseException:
            undo.dir, undo.files = None, []      # the kept copy stays
            self._rollback(plan.instance, undo)
            raise

    def drop_cold_source(self, instance):
        """Confirm: the kept files go (never those of a guest defined here)."""
        if self._call(lambda c: self._find(c, instance['uuid'])) is not None:
            raise exception.MigrationError(
                uuid=instance['uuid'], reason='the source defines it again')
        disks.remove_instance_dir(self.conf, instance['name'])

    # -- destination -------------------------------------------------------------
    def receive_cold(self, rplan, address, key, exports):
        """Copy the exported files, grow them to the new flavor, make the
        files only the new flavor has, then define the guest (started by
        ``power_on`` at the take-over); everything undone on failure."""
        new = rplan.new
        instance = new.instance
        if self._call(lambda c: self._find(c, instance['uuid'])) is not None:
            raise exception.MigrationPreCheckError(
                uuid=instance['uuid'],
                reason='the destination already has a domain of it')
        wanted = {f.name: f for f in new.files}
        undo = Undo()
        keydir = _psk_dir(key)
        try:
            inst_dir = self._make_dir(instance, undo)
            copied = set()
            for e in exports:
                f = wanted.get(e['name'])
                if f is None or e['name'] in rplan.replace:
                    continue        # only the old flavor's, or made afresh
                path = disks.safe_join(inst_dir, f.name, field='disk.name')
                undo.files.append(path)
                # This host's plan says the format (the stream is the
                # guest's view of the disk, whatever the source stored).
                self._fetch(address, int(e['port']), keydir, f.fmt, path)
                if f.size_bytes and f.kind in ('root', 'ephemeral'):
                    size = disks.qemu_img_info(path, f.fmt)['virtual-size']
                    if f.size_bytes > size:
                        disks.run(['qemu-img', 'resize', '-q', '-f', f.fmt,
                                   path, str(f.size_bytes)], path)
                copied.add(f.name)
            for f in new.files:
                if f.name not in copied:
                    undo.files.append(self._create_file(new, inst_dir, f))
            pause_points.pause('cold-dest-copied')
            self._connect_volumes(new.volumes, undo)
            xml = new.xml()
            self._call(lambda c: c.defineXML(xml))
            undo.domain = True
        except BaseException:
            self._rollback(instance, undo)
            raise
        finally:
            shutil.rmtree(keydir, ignore_errors=True)

    def _fetch(self, address, port, keydir, fmt, path):
        if not ADDRESS_RE.match(str(address)):
            raise exception.InvalidRequest('migration.address',
                                           'is not a host address')
        if not 0 < port < 65536:
            raise exception.InvalidRequest('migration.exports.port',
                                           'is not a TCP port')
        host = '[%s]' % address if ':' in address else address
        LOG.info('Copying %s from %s:%d', path, host, port)
        with disks.building(path) as tmp:
            disks.run(['qemu-img', 'convert', '-q', '-O', fmt,
                       '--object', 'tls-creds-psk,id=tls0,endpoint=client,'
                       'dir=%s,username=%s' % (keydir, PSK_USER),
                       '--image-opts',
                       'driver=nbd,host=%s,port=%d,export=%s,tls-creds=tls0'
                       % (address, port, EXPORT_NAME), tmp],
                      path, timeout=disks.CONVERT_TIMEOUT)

    def stop_cold_copy(self, instance):
        """Revert at the destination, first: the copy stopped hard (its
        disks are discarded once the source runs the guest again)."""
        self._on_domain(instance, guest.destroy_if_active)

    def remove_cold_copy(self, instance, network_info, block_device_info):
        """Revert at the destination: the guest and everything of it go."""
        self._remove_domain(instance['uuid'])
        self._release(instance, network_info, block_device_info,
                      remove_files=True)
