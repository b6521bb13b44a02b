"""Creating the disk files of a ``GuestPlan`` inside an instance directory.

Every path goes through ``instance_dir``/``safe_join`` so that a hostile
instance name or file name can never make the agent write outside
``instances_path``. Every file is built under a temporary name and renamed,
so a crash never leaves a half-made disk under its final name.

Permissions: libvirt runs QEMU as ``libvirt-qemu``, which must read the
files. Here directories are 0755 and disk files 0644 (libvirt's
dynamic_ownership chowns the disks of a running guest on qemu:///system
anyway). The config drive, which holds admin_pass, is 0600 (see
configdrive.FILE_MODE). Production should make the instance directory 0750
owned by root:<qemu group> (or rely on dynamic_ownership/SELinux labels) so
other local users cannot read guest disks.
"""

import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading

from oslo_concurrency import processutils

from compute_agent import exception
from compute_agent import rules

LOG = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 120
CONVERT_TIMEOUT = 3600        # copying a large image can take a while
MKFS_TIMEOUT = 600
DIR_MODE = 0o755
FILE_MODE = 0o644
# disk_format of an image -> the format qemu-img must find in it
IMAGE_FORMATS = {'qcow2': 'qcow2', 'raw': 'raw', 'iso': 'raw', 'ami': 'raw',
                 'aki': 'raw', 'ari': 'raw'}
FS_LABEL = 'ephemeral0'
_BLANK_LOCK = threading.Lock()
# What ``qemu-img info`` may use on a downloaded (untrusted) image: a crafted
# image can make it burn CPU and memory (CVE-2015-5162). nova's limits.
QEMU_IMG_INFO_LIMITS = processutils.ProcessLimits(cpu_time=30,
                                                  address_space=1 << 30)


class DiskCreateError(exception.AgentError):
    msg_fmt = 'Failed to create disk %(path)s: %(reason)s'


def _inside(root, path):
    """Whether ``path``, ``root`` joined with one plain name, resolves inside
    ``root``: only a symlink can lead out, so only one is resolved (a
    realpath costs a system call per path component; a spawn checks ~12
    names)."""
    if not os.path.islink(path):
        return True
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def safe_join(directory, filename, field='file name'):
    """``directory/filename`` where filename is one plain path component.

    Refuses separators, '.', '..', NUL and a symlink leading out of
    ``directory`` (InvalidRequest on ``field``; the reason does not repeat
    the name).
    """
    if (not isinstance(filename, str) or filename in ('', '.', '..')
            or '/' in filename or '\0' in filename):
        raise exception.InvalidRequest(
            field, 'must be one plain file name (no "/", NUL, "." or "..")')
    path = os.path.join(directory, filename)
    if not _inside(directory, path):
        raise exception.InvalidRequest(field, 'leads outside its directory')
    return path


def fsync_dir(path):
    """Make the names in ``path`` (a rename, a link) survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def instance_dir(conf, name, create=False):
    """Validated ``<instances_path>/<name>``; made 0755 when ``create``."""
    rules.INSTANCE_NAME.require(name, 'instance.name')
    root = os.path.realpath(conf.instances_path)
    path = safe_join(root, name, field='instance.name')
    if create:
        os.makedirs(root, mode=DIR_MODE, exist_ok=True)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
        if not os.path.isdir(path) or not _inside(root, path):
            raise exception.InvalidRequest('instance.name',
                                           'names something that is not a directory')
        os.chmod(path, DIR_MODE)
    return path


def remove_instance_dir(conf, name):
    """Remove an instance's directory (never through a symlink)."""
    path = instance_dir(conf, name)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)


def base_dir(conf):
    """``<instances_path>/_base``: cached images and blank bases."""
    return safe_join(os.path.realpath(conf.instances_path), '_base',
                     field='instances_path')


def _run(argv, path, timeout=QEMU_IMG_TIMEOUT):
    """Run argv (never through a shell); DiskCreateError naming ``path``."""
    env = dict(os.environ, LC_ALL='C')
    try:
        res = subprocess.run(argv, capture_output=True, text=True,
                             timeout=timeout, env=env, check=False)
    except FileNotFoundError:
        raise DiskCreateError(path=path, reason=f'{argv[0]} not found') from None
    except subprocess.TimeoutExpired:
        raise DiskCreateError(
            path=path, reason=f'{argv[0]} timed out after {timeout}s') from None
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip()[-500:]
        raise DiskCreateError(path=path, reason=(
            f"{' '.join(argv[:2])} exited {res.returncode}: {err}"))
    return res.stdout


run = _run     # for the other file operations of virt/ (resizeops)


def qemu_img_info(path, fmt=None):
    """``qemu-img info`` as a dict (``-U``: the base may be in use), run
    under ``QEMU_IMG_INFO_LIMITS`` (CPU seconds, address space)."""
    argv = ['qemu-img', 'info', '-U', '--output=json']
    if fmt:
        argv += ['-f', fmt]
    try:
        out, _err = processutils.execute(
            *argv, path, prlimit=QEMU_IMG_INFO_LIMITS,
            env_variables=dict(os.environ, LC_ALL='C'),
            timeout=QEMU_IMG_TIMEOUT)
    except processutils.ProcessExecutionError as e:
        err = (e.stderr or e.stdout or e.description or '').strip()[-500:]
        raise DiskCreateError(path=path, reason=(
            f'qemu-img info exited {e.exit_code}: {err}')) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DiskCreateError(path=path, reason=f'qemu-img info: {e}') from None
    return json.loads(out)


def inspect_base(path, disk_format=None):
    """Info of a cached image, refusing ones that could read host files.

    A qcow2 image naming a backing or data file would make QEMU open any
    path on the host (the classic image-format attack), so such images are
    rejected; a declared ``disk_format`` must match what qemu-img finds.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise DiskCreateError(path=path, reason=f'cannot read image: {e.strerror}') from None
    info = _base_info(path, st.st_ino, st.st_size, st.st_mtime_ns)
    data = info.get('format-specific', {}).get('data', {})
    if info.get('backing-filename') or data.get('data-file'):
        raise DiskCreateError(path=path, reason='image has a backing/data file')
    want = IMAGE_FORMATS.get(disk_format) if disk_format else None
    if want and info['format'] != want:
        raise DiskCreateError(path=path, reason=(
            f"image declared {disk_format} but is {info['format']}"))
    return info


@functools.lru_cache(maxsize=256)
def _base_info(path, _ino, _size, _mtime_ns):
    """``qemu_img_info`` of a cached base, once per version of the file.

    Bases are written once under a temp name and renamed, so (inode, size,
    mtime) names one content; this saves a qemu-img run (~8 ms) per spawn.
    Callers must not modify the returned dict.
    """
    return qemu_img_info(path)


class _Building:
    """A temp file next to ``path``; renamed over it on success, else removed."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(
            dir=os.path.dirname(self.path),
            prefix=f'.{os.path.basename(self.path)}.', suffix='.part')
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            unlink(self.tmp)
            return False
        os.chmod(self.tmp, FILE_MODE)
        os.rename(self.tmp, self.path)
        return False


building = _Building     # for resizeops: a file made under a temp name


def unlink(path):
    """Remove ``path``; one already gone is fine (every step repeats)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_stale_temps(directory, names):
    """Remove the temp files (``.<name>.<random>.part``) of ``names`` that a
    killed agent left in ``directory`` (none if it does not exist). Only for
    a caller holding the lock under which these files are made: no one else
    is making them now."""
    names = set(names)
    try:
        with os.scandir(directory) as entries:  # mkstemp's random part has no dot
            stale = [e.path for e in entries if e.name.startswith('.')
                     and e.name.endswith('.part')
                     and e.name[1:-5].rpartition('.')[0] in names]
    except FileNotFoundError:
        return
    for path in stale:
        unlink(path)
        LOG.info('Removed %s, left by an interrupted attempt', path)


def write_atomic(path, text):
    """``path`` holds ``text`` whole or keeps what it held (temp, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.part',
                               prefix='.%s.' % os.path.basename(path))
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        unlink(tmp)
        raise


def create_overlay(base, path, size_bytes=0, disk_format=None):
    """qcow2 overlay on ``base``, grown to ``size_bytes`` if that is larger."""
    return start_overlay(base, path, size_bytes, disk_format).wait()


def start_overlay(base, path, size_bytes=0, disk_format=None):
    """``create_overlay`` with its ``qemu-img`` started, not waited for:
    a ``Pending`` whose ``wait()`` ends it. The caller must wait."""
    info = inspect_base(base, disk_format)
    argv = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', os.path.abspath(base),
            '-F', info['format']]
    extra = [str(size_bytes)] if size_bytes > info['virtual-size'] else []
    building = _Building(path)
    tmp = building.__enter__()
    try:
        proc = subprocess.Popen(argv + [tmp] + extra, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, LC_ALL='C'))
    except BaseException as e:
        building.__exit__(type(e), e, None)
        if isinstance(e, FileNotFoundError):
            raise DiskCreateError(path=path, reason=f'{argv[0]} not found') from None
        raise
    return Pending(path, argv, proc, building)


class Pending:
    """A disk a child process is making under its temporary name; ``wait()``
    renames it into place (or removes it and raises DiskCreateError)."""

    def __init__(self, path, argv, proc, building, timeout=QEMU_IMG_TIMEOUT):
        self.path, self._argv, self._proc = path, argv, proc
        self._building, self._timeout = building, timeout

    def wait(self):
        try:
            try:
                out, err = self._proc.communicate(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.communicate()
                raise DiskCreateError(path=self.path, reason=(
                    f'{self._argv[0]} timed out after {self._timeout}s')) from None
            except BaseException:
                self._proc.kill()       # interrupted: no child outlives us
                self._proc.communicate()
                raise
            if self._proc.returncode != 0:
                msg = (err or out).strip()[-500:]
                raise DiskCreateError(path=self.path, reason=(
                    f"{' '.join(self._argv[:2])} exited "
                    f"{self._proc.returncode}: {msg}"))
        except BaseException as e:
            self._building.__exit__(type(e), e, None)
            raise
        self._building.__exit__(None, None, None)
        return self.path


class Done:
    """A disk made already (the ``Pending`` interface)."""

    def __init__(self, path):
        self.path = path

    def wait(self):
        return self.path


def create_raw_copy(base, path, size_bytes=0, disk_format=None):
    """Raw (sparse) copy of ``base``, grown to ``size_bytes``, never shrunk."""
    info = inspect_base(base, disk_format)
    with _Building(path) as tmp:
        _run(['qemu-img', 'convert', '-q', '-f', info['format'], '-O', 'raw',
              os.path.abspath(base), tmp], path, timeout=CONVERT_TIMEOUT)
        if size_bytes > info['virtual-size']:
            _run(['qemu-img', 'resize', '-q', '-f', 'raw', tmp, str(size_bytes)], path)
    return path


def _mkfs_argv(fs_format, label, target):
    if fs_format == 'vfat':
        return ['mkfs.vfat', '-n', label.upper()[:11], target]
    return [f'mkfs.{fs_format}', '-q', '-F', '-L', label[:16], target]


def _blank(path, size_bytes, prepare, fmt):
    """Sparse raw file, ``prepare``d (mkfs/mkswap), converted when qcow2."""
    if size_bytes <= 0 or fmt not in ('raw', 'qcow2'):
        raise DiskCreateError(path=path, reason=(
            f'bad size {size_bytes!r} or format {fmt!r}'))
    with _Building(path) as tmp:
        raw = tmp if fmt == 'raw' else tmp + '.raw'
        try:
            with open(raw, 'wb') as f:
                f.truncate(size_bytes)
            if prepare:
                _run(prepare(raw), path, timeout=MKFS_TIMEOUT)
            if raw != tmp:
                _run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2',
                      raw, tmp], path, timeout=CONVERT_TIMEOUT)
        finally:
            if raw != tmp:
                unlink(raw)
    return path


def _ephemeral_prepare(fs_format, label):
    return (lambda t: _mkfs_argv(fs_format, label, t)) if fs_format else None


def _swap_prepare(target):
    return ['mkswap', target]


def create_ephemeral(path, size_bytes, fs_format=None, label=FS_LABEL, fmt='raw'):
    """Blank disk, formatted with ``fs_format`` (ext2/3/4, vfat) when set."""
    return _blank(path, size_bytes, _ephemeral_prepare(fs_format, label), fmt)


def create_swap(path, size_bytes, fmt='raw'):
    """Blank disk with a swap signature (mkswap)."""
    return _blank(path, size_bytes, _swap_prepare, fmt)


def blank_base(base_dir, kind, size_bytes, fs_format=None):
    """The cached raw blank of ``kind`` ('ephemeral' or 'swap'), made once.

    ``<base_dir>/<kind>_<size>[_<fs_format>]``, formatted (mkfs) or given
    its swap signature when first needed; every instance's disk of that
    size is a qcow2 overlay on it (nova's Qcow2 backend does the same), so
    a spawn neither formats nor writes the whole disk again.
    """
    if kind not in ('ephemeral', 'swap'):
        raise DiskCreateError(path=base_dir, reason=f'no blank base for {kind!r}')
    suffix = f'_{fs_format}' if kind == 'ephemeral' and fs_format else ''
    path = os.path.join(base_dir, f'{kind}_{int(size_bytes)}{suffix}')
    with _BLANK_LOCK:       # concurrent spawns format it once
        if not os.path.exists(path):
            os.makedirs(base_dir, mode=DIR_MODE, exist_ok=True)
            prepare = (_swap_prepare if kind == 'swap'
                       else _ephemeral_prepare(fs_format, FS_LABEL))
            _blank(path, size_bytes, prepare, 'raw')
    return path


def link_or_copy(src, path):
    """Hardlink ``src`` (same file system) or copy it, atomically."""
    with _Building(path) as tmp:
        try:
            os.unlink(tmp)
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return path


COPY_KINDS = ('iso', 'kernel', 'ramdisk', 'kernel.rescue', 'ramdisk.rescue')
# Kinds start_disk may leave Pending (a qemu-img overlay): started first.
CHILD_KINDS = ('root', 'rescue', 'ephemeral', 'swap')


def create_disk(conf, inst_dir, disk, base_path=None, disk_format=None):
    """Create one ``plan.DiskFile`` in ``inst_dir``; returns its path.
    See ``start_disk``."""
    return start_disk(conf, inst_dir, disk, base_path, disk_format).wait()


def start_disk(conf, inst_dir, disk, base_path=None, disk_format=None):
    """Start creating one ``plan.DiskFile`` in ``inst_dir``: a qcow2 overlay
    is a ``Pending`` (its ``qemu-img`` runs while the caller makes other
    files; the caller must ``wait()``), anything else is made now (``Done``).

    ``base_path`` is the cached image for root/rescue/iso/kernel/ramdisk
    kinds and ``disk_format`` its declared image_meta disk_format. An
    existing file of the same name is replaced. The config drive is built
    by ``configdrive.build_config_drive`` (it needs the instance). A qcow2
    ephemeral or swap disk is an overlay on a ``blank_base`` in
    ``base_dir(conf)``.
    """
    path = safe_join(inst_dir, disk.name, field='disk.name')
    if disk.kind in ('root', 'rescue') or disk.kind in COPY_KINDS:
        if not base_path:
            raise DiskCreateError(path=path, reason=f'{disk.kind} disk needs an image')
        if disk.kind in COPY_KINDS:
            return Done(link_or_copy(base_path, path))
        if disk.fmt == 'qcow2':
            return start_overlay(base_path, path, disk.size_bytes, disk_format)
        return Done(create_raw_copy(base_path, path, disk.size_bytes, disk_format))
    if disk.kind in ('ephemeral', 'swap') and disk.fmt == 'qcow2':
        base = blank_base(base_dir(conf), disk.kind, disk.size_bytes,
                          conf.default_ephemeral_format)
        return start_overlay(base, path, disk.size_bytes, 'raw')
    if disk.kind == 'ephemeral':
        return Done(create_ephemeral(path, disk.size_bytes,
                                     conf.default_ephemeral_format, fmt=disk.fmt))
    if disk.kind == 'swap':
        return Done(create_swap(path, disk.size_bytes, fmt=disk.fmt))
    if disk.kind == 'config':
        raise DiskCreateError(path=path, reason='use configdrive.build_config_drive')
    raise DiskCreateError(path=path, reason=f'unknown disk kind {disk.kind!r}')
