"""Removing cached images that no instance uses any more.

``_base`` would otherwise grow with every image ever spawned on the host.
A cached image is in use while an instance disk is a qcow2 overlay on it
(its header names it as backing file) or a hard link to it (kernels and
ramdisks). An unused image is removed once its last use (the mtime of its
``.info``, touched by every fetch) is ``min_age`` seconds old, under the
image's exclusive lock: a spawn that fetched it since then is seen by that
age, and one that fetches it later downloads it again.
"""

import contextlib
import logging
import os
import re
import time

LOG = logging.getLogger(__name__)
CACHED_NAME = re.compile(r'[0-9a-f]{40}')     # sha1 of the image id
QCOW2_MAGIC = b'QFI\xfb'
MAX_BACKING_NAME = 1023                         # QEMU's own limit


def backing_file(path):
    """The backing file a qcow2 image names (absolute), or None."""
    try:
        with open(path, 'rb') as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != QCOW2_MAGIC:
                return None
            offset = int.from_bytes(header[8:16], 'big')
            size = int.from_bytes(header[16:20], 'big')
            if not offset or not 0 < size <= MAX_BACKING_NAME:
                return None
            f.seek(offset)
            name = os.fsdecode(f.read(size))
    except OSError:
        return None
    return os.path.join(os.path.dirname(path), name)


def images_in_use(instances_path, base_dir):
    """Real paths under ``base_dir`` that instance disks are overlays of."""
    used = set()
    for inst in _scandir(instances_path):
        if not inst.is_dir(follow_symlinks=False) or inst.name == '_base':
            continue
        for f in _scandir(inst.path):
            if f.is_file(follow_symlinks=False):
                backing = backing_file(f.path)
                if backing is not None:
                    used.add(os.path.realpath(backing))
    return {p for p in used if os.path.dirname(p) == base_dir}


def remove_unused(cache, min_age, now=None):
    """Remove the cached images nothing uses since ``min_age`` seconds.

    Returns the file names removed. Errors on one image are logged and do
    not stop the others. Nothing is removed while ``[images]
    remove_unused_base_images`` is false.
    """
    if not cache.conf.images.remove_unused_base_images:
        # The operator keeps every base ([image_cache] or [images]
        # remove_unused_base_images = false), whoever calls this.
        LOG.debug('remove_unused_base_images is false: keeping cached images')
        return []
    now = time.time() if now is None else now
    base_dir = cache.base_dir
    if not os.path.isdir(base_dir):
        return []
    used = images_in_use(cache.conf.instances_path, base_dir)
    removed = []
    for entry in sorted(_scandir(base_dir), key=lambda e: e.name):
        if not CACHED_NAME.fullmatch(entry.name) or entry.path in used:
            continue
        try:
            if _remove_if_unused(cache, entry.path, min_age, now):
                removed.append(entry.name)
        except OSError:
            LOG.exception('Could not remove cached image %s', entry.name)
    return removed


def _remove_if_unused(cache, path, min_age, now):
    side = {s: path + s for s in ('.info', '.lock')}
    with cache.locked(path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if st.st_nlink > 1:                      # a kernel/ramdisk link
            return False
        last_use = st.st_mtime
        with contextlib.suppress(FileNotFoundError):
            last_use = max(last_use, os.stat(side['.info']).st_mtime)
        if now - last_use < min_age:
            return False
        image_id = cache.read_info(path).get('id', '?')
        os.unlink(path)
        for p in (side['.info'], side['.lock']):   # the lock last: still held
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    LOG.info('Removed cached image %s (%s): unused for %.0f s',
             os.path.basename(path), image_id, now - last_use)
    return True


def _scandir(path):
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []

