"""Removing unused cached images (images/cleanup.py), with real files,
real qemu-img overlays and real flock locks."""

import fcntl
import hashlib
import os
import subprocess
import threading
import time

import pytest

from compute_agent.images import cleanup
from compute_agent.virt import disks

try:
    from tests.unit.test_images import make_conf, new_cache, put_image
except ImportError:      # run from inside tests/unit
    from test_images import make_conf, new_cache, put_image

DAY = 86400


@pytest.fixture
def cache(tmp_path):
    return new_cache(make_conf(tmp_path))


def cached(cache, tmp_path, image_id, data=b'x' * 4096):
    put_image(tmp_path, image_id, data)
    return cache.fetch(image_id)


def instance_dir(cache, name):
    path = os.path.join(cache.conf.instances_path, name)
    os.makedirs(path, exist_ok=True)
    return path


def test_backing_file_of_overlays_only(tmp_path):
    base = str(tmp_path / 'base')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'raw', base, '1M'], check=True)
    overlay = str(tmp_path / 'overlay')
    disks.create_overlay(base, overlay)
    plain = str(tmp_path / 'plain')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', plain, '1M'], check=True)
    (tmp_path / 'short').write_bytes(b'QFI\xfb')
    assert cleanup.backing_file(overlay) == base
    assert cleanup.backing_file(plain) is None
    assert cleanup.backing_file(base) is None
    assert cleanup.backing_file(str(tmp_path / 'short')) is None
    assert cleanup.backing_file(str(tmp_path / 'missing')) is None


def test_only_unused_and_old_images_go(cache, tmp_path):
    root = cached(cache, tmp_path, 'root')
    kernel = cached(cache, tmp_path, 'kernel')
    spare = cached(cache, tmp_path, 'spare')
    inst = instance_dir(cache, 'vm-1')
    disks.create_overlay(root, os.path.join(inst, 'disk'))
    os.link(kernel, os.path.join(inst, 'kernel'))
    base = os.path.dirname(root)

    # Just used: nothing goes, however little min_age is.
    assert cleanup.remove_unused(cache, 60) == []
    # A day later: only the image no instance uses, with its .info and .lock.
    later = time.time() + DAY
    assert cleanup.remove_unused(cache, 60, now=later) == [os.path.basename(spare)]
    names = os.listdir(base)
    assert not [n for n in names if n.startswith(os.path.basename(spare))]
    assert os.path.basename(root) in names and os.path.basename(kernel) in names

    # The instance goes: so do its images, once they are old enough.
    for f in os.listdir(inst):
        os.unlink(os.path.join(inst, f))
    assert cleanup.remove_unused(cache, 2 * DAY, now=later) == []
    assert sorted(cleanup.remove_unused(cache, 60, now=later)) == sorted(
        os.path.basename(p) for p in (root, kernel))
    assert os.listdir(base) == []


def test_a_fetch_counts_as_a_use(cache, tmp_path):
    path = cached(cache, tmp_path, 'img')
    old = time.time() - 2 * DAY
    for p in (path, path + '.info'):
        os.utime(p, (old, old))
    cache.fetch('img')                      # a cache hit, no download
    assert cache.downloads == 1
    assert cleanup.remove_unused(cache, DAY) == []
    os.utime(path + '.info', (old, old))
    assert cleanup.remove_unused(cache, DAY) == [os.path.basename(path)]
    # Fetched again after removal: downloaded again, complete.
    assert cache.fetch('img') == path
    assert cache.downloads == 2
    assert open(path, 'rb').read() == b'x' * 4096


def test_other_files_in_base_are_left_alone(cache, tmp_path):
    cached(cache, tmp_path, 'img')
    base = cache.base_dir
    for name in ('README', '.' + 'a' * 40 + '.part', 'A' * 40):
        open(os.path.join(base, name), 'w').close()
    before = sorted(os.listdir(base))
    removed = cleanup.remove_unused(cache, 60, now=time.time() + DAY)
    assert removed == [hashlib.sha1(b'img').hexdigest()]
    assert sorted(os.listdir(base)) == sorted(
        n for n in before if not n.startswith(removed[0]))


def test_overlays_in_other_places_do_not_pin(cache, tmp_path):
    # Only instance directories count: an overlay elsewhere (or a link to
    # a base from outside instances_path) does not keep an image.
    root = cached(cache, tmp_path, 'root')
    disks.create_overlay(root, str(tmp_path / 'elsewhere'))
    assert cleanup.images_in_use(cache.conf.instances_path, cache.base_dir) == set()


def test_waiter_on_a_removed_lock_file_locks_the_new_one(cache, tmp_path):
    """The lock file of a removed image is deleted while held: a thread that
    was waiting on it must not think it holds the image's lock."""
    path = cached(cache, tmp_path, 'img')
    lock = path + '.lock'
    got = threading.Event()
    release = threading.Event()

    def waiter():
        with cache.flock(path, fcntl.LOCK_EX):
            got.set()
            release.wait(10)
    with cache.locked(path):
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.2)                   # the waiter blocks on this file
        assert not got.is_set()
        os.unlink(lock)                   # what remove_unused does
    assert got.wait(10)
    try:
        # The waiter holds the lock file that exists now, so nobody else can.
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        release.set()
        t.join(10)


def test_remove_unused_base_images_false_keeps_everything(cache, tmp_path):
    """nova.conf's [image_cache] remove_unused_base_images = false: the
    cleanup itself removes nothing, whoever schedules it."""
    spare = cached(cache, tmp_path, 'spare')
    cache.conf.set_override('remove_unused_base_images', False, 'images')
    later = time.time() + 30 * DAY
    assert cleanup.remove_unused(cache, 60, now=later) == []
    assert os.path.exists(spare)
    cache.conf.set_override('remove_unused_base_images', True, 'images')
    assert cleanup.remove_unused(cache, 60, now=later) == [os.path.basename(spare)]
