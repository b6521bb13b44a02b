"""The image cache: each image is downloaded once per host, verified once.

Images live in ``<instances_path>/_base/<sha1(image id)>``; instance disks
are overlays or copies of them. A download streams into a temp file in
``_base`` (hashing as it goes), is fsynced and renamed into place, so a
cached file is always complete. Concurrent fetches of one image - threads of
this agent or other processes (a second agent, a tool) - are serialised by
an in-process lock plus an exclusive ``flock`` on ``<sha1>.lock``; whoever
gets the lock second finds the image cached. A checksum verified once is
recorded in ``<sha1>.info`` and trusted afterwards, so spawns do not rehash
gigabytes. Each use touches ``<sha1>.info`` (its mtime is the last use)
under a shared ``flock``, so ``cleanup`` (which removes images under the
exclusive one) never removes an image between its check and its use.
"""

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import tempfile
import threading
import urllib.parse

import tenacity

from compute_agent import exception
from compute_agent import rules
from compute_agent.images import progress as progress_mod
from compute_agent.images import sources
from compute_agent.images import store
from compute_agent.virt import disks
from compute_agent.virt.disks import safe_join

LOG = logging.getLogger(__name__)
CHUNK = 1 << 20
FILE_MODE = 0o644             # QEMU (libvirt-qemu) reads backing files


def parse_checksum(checksum):
    """``'<md5 hex>'`` or ``'sha256:<hex>'`` -> ``(algo, hex)``; None -> None.

    The rule is ``rules.CHECKSUM``; here hex digits may be upper case too.
    """
    if checksum is None:
        return None
    value = checksum.lower() if isinstance(checksum, str) else checksum
    rules.CHECKSUM.require(value, 'image_meta.checksum')
    if value.startswith('sha256:'):
        return 'sha256', value[7:]
    return 'md5', value


def _fmt(algo, digest):
    return digest if algo == 'md5' else f'{algo}:{digest}'


def _transient(exc):
    """Errors worth retrying: I/O and HTTP failures, never our verdicts."""
    return (isinstance(exc, (OSError, http.client.HTTPException))
            and not isinstance(exc, exception.AgentError))


class ImageCache:
    """Fetches images into ``_base``; ``downloads`` counts download attempts.

    ``sources`` maps a URL scheme to an ``ImageSource`` instance and
    overrides the entry point lookup (tests, embedding).
    """

    retry_wait = tenacity.wait_exponential(multiplier=0.5, max=10)

    def __init__(self, conf, sources=None):
        self.conf = conf
        self.downloads = 0
        self._sources = dict(sources or {})
        self._mutex = threading.Lock()
        self._locks = {}

    # -- paths: every one goes through safe_join under instances_path --
    @property
    def base_dir(self):
        root = os.path.realpath(self.conf.instances_path)
        return safe_join(root, '_base', field='instances_path')

    def path_for(self, image_id):
        """Cache path of ``image_id`` (which must be a valid image id)."""
        _check_id(image_id)
        name = hashlib.sha1(image_id.encode(), usedforsecurity=False).hexdigest()
        return safe_join(self.base_dir, name, field='image_meta.id')

    def _side(self, path, suffix):
        return safe_join(os.path.dirname(path), os.path.basename(path) + suffix)

    # -- resolving --
    def resolve_url(self, image_meta):
        """The URL to fetch: ``location`` if allowed, else the store's."""
        location = image_meta.get('location')
        if not location:
            return store.url_for(self.conf, image_meta['id'], 'image_meta.id')
        if not isinstance(location, str):
            raise exception.InvalidRequest('image_meta.location', 'must be a string')
        parts = urllib.parse.urlsplit(location)
        scheme = parts.scheme.lower()
        if scheme not in self.conf.images.allowed_schemes:
            raise exception.InvalidRequest(
                'image_meta.location', f'scheme {scheme} not allowed')
        if scheme != 'file':
            return location
        base = urllib.parse.urlsplit(store.base_url(self.conf))
        if base.scheme != 'file' or parts.netloc not in ('', 'localhost'):
            raise exception.InvalidRequest(
                'image_meta.location', 'file location outside the image store')
        store_dir = os.path.realpath(urllib.parse.unquote(base.path))
        real = os.path.realpath(urllib.parse.unquote(parts.path))
        if real == store_dir or os.path.commonpath([store_dir, real]) != store_dir:
            raise exception.InvalidRequest(
                'image_meta.location', 'file location outside the image store')
        return 'file://' + urllib.parse.quote(real)

    def _source(self, url, field):
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        with self._mutex:
            if scheme in self._sources:
                return self._sources[scheme]
        return sources.get_source(self.conf, scheme, field)

    # -- fetching --
    def fetch(self, image_meta_or_id, checksum=None):
        """Path of the cached, verified image; downloads it if needed.

        ``image_meta_or_id`` is an image_meta dict (docs: protocol-image-meta) or
        a bare image id; ``checksum`` overrides image_meta's.
        """
        meta = image_meta_or_id
        if not isinstance(meta, dict):
            meta = {'id': meta}
        image_id = meta.get('id')
        _check_id(image_id)
        want = parse_checksum(checksum or meta.get('checksum'))
        url = self.resolve_url(meta)
        # Where the URL came from, for an error about its scheme.
        field = ('image_meta.location' if meta.get('location')
                 else '[images] image_store_url')
        path = self.path_for(image_id)
        with self.flock(path, fcntl.LOCK_SH):
            if self._ready(path, image_id, want, may_hash=False):
                self._touch(path, image_id)
                return path
        with self.locked(path):
            if not self._ready(path, image_id, want, may_hash=True):
                self._download(image_id, url, path, want, field)
            self._touch(path, image_id)
        return path

    def _touch(self, path, image_id):
        """Record a use: the mtime of ``<sha1>.info`` is the last one."""
        try:
            os.utime(self._side(path, '.info'))
        except FileNotFoundError:
            self._write_info(path, image_id, {})

    def _ready(self, path, image_id, want, may_hash):
        """True if cached and matching ``want``; raises on a known mismatch."""
        if not os.path.exists(path):
            return False
        if want is None:
            return True
        algo, expected = want
        digests = self.read_info(path).get('digests', {})
        actual = digests.get(algo)
        if actual is None:
            if not may_hash:
                return False
            # Cached without this checksum: hash it once, then trust it.
            actual = _hash_file(path, algo)
            self._write_info(path, image_id, dict(digests, **{algo: actual}))
        if actual != expected:
            raise exception.ImageChecksumMismatch(
                image_id=image_id, expected=_fmt(algo, expected),
                actual=_fmt(algo, actual))
        return True

    @contextlib.contextmanager
    def locked(self, path):
        """Exclusive use of the cached image ``path``: threads and processes."""
        with self._mutex:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock, self.flock(path, fcntl.LOCK_EX):
            # Temp files of this image are only written under this lock:
            # any left now belong to a download that died (SIGKILL).
            name = os.path.basename(path)
            disks.remove_stale_temps(self.base_dir, [name, name + '.info'])
            yield

    @contextlib.contextmanager
    def flock(self, path, mode):
        """``flock(mode)`` on ``<path>.lock``, the file that is there now.

        ``cleanup`` deletes the lock file of an image it removes (while
        holding it), so a waiter may end up locking a deleted file: it then
        closes it and locks the current one instead.
        """
        lock_path = self._side(path, '.lock')
        os.makedirs(self.base_dir, mode=0o755, exist_ok=True)
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, mode)
                current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)      # releases the flock

    def _download(self, image_id, url, path, want, field):
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.conf.images.download_retries + 1),
            wait=self.retry_wait, retry=tenacity.retry_if_exception(_transient),
            before_sleep=tenacity.before_sleep_log(LOG, logging.WARNING),
            reraise=True)
        for attempt in retrying:
            with attempt:
                self._download_once(image_id, url, path, want, field)

    def _download_once(self, image_id, url, path, want, field):
        source = self._source(url, field)
        with self._mutex:
            self.downloads += 1
        fd, tmp = tempfile.mkstemp(dir=self.base_dir, suffix='.part',
                                   prefix=f'.{os.path.basename(path)}.')
        try:
            with os.fdopen(fd, 'wb') as out:
                try:
                    stream, size = source.open(url)
                except exception.ImageNotFound as e:
                    raise exception.ImageNotFound(
                        image_id=image_id,
                        reason=e.kwargs.get('reason', e.message)) from None
                hasher = hashlib.new(want[0], usedforsecurity=False) if want else None
                written = 0
                progress = progress_mod.DownloadProgress(image_id, size)
                with contextlib.closing(stream):
                    while chunk := stream.read(CHUNK):
                        out.write(chunk)
                        written += len(chunk)
                        progress.update(len(chunk))
                        if hasher:
                            hasher.update(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size is not None and written != size:
                raise OSError(f'short download of {url}: {written} of {size} bytes')
            digests = {}
            if want:
                digests[want[0]] = actual = hasher.hexdigest()
                if actual != want[1]:
                    raise exception.ImageChecksumMismatch(
                        image_id=image_id, expected=_fmt(*want),
                        actual=_fmt(want[0], actual))
            os.chmod(tmp, FILE_MODE)
            # The info first: a crash in between leaves an info for an absent
            # image, which the next download overwrites.
            self._write_info(path, image_id, digests)
            os.rename(tmp, path)
            tmp = None
            disks.fsync_dir(self.base_dir)
            LOG.info('Cached image %s (%d bytes) from %s', image_id, written, url)
        finally:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def read_info(self, path):
        try:
            with open(self._side(path, '.info')) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def _write_info(self, path, image_id, digests):
        info = self._side(path, '.info')
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(info), suffix='.part',
                                   prefix=f'.{os.path.basename(info)}.')
        try:
            with os.fdopen(fd, 'w') as f:
                json.dump({'id': image_id, 'digests': digests}, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            os.rename(tmp, info)
        except BaseException:
            os.unlink(tmp)
            raise


def _check_id(image_id):
    # The id becomes part of a URL and a store file name: no '/', no '..'.
    rules.IMAGE_ID.require(image_id, 'image_meta.id')


def _hash_file(path, algo):
    h = hashlib.new(algo, usedforsecurity=False)
    with open(path, 'rb') as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
