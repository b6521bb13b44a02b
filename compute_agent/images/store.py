"""The image store: where image ids live (``[images] image_store_url``).

The one place that turns an image id into a store URL (``url_for``; the
cache fetches from it) and that writes new images into the store (docs:
protocol-image-store). A snapshot adds exactly one entry, complete or not
at all:

* ``file://`` stores: the image becomes ``<base>/<image_id>`` through a hard
  link of a complete, fsynced file that is already inside the store
  directory (``link`` never replaces an existing name, so an image is never
  overwritten, even by a racing writer). The source is linked when it lies
  on the store's file system, else copied to a temporary ``.<id>.*.part``
  name there first; temporary names are removed on any failure (and, left
  by a killed agent, by the next write of that id).
* ``http(s)://`` stores: ``PUT <base>/<image_id>`` streaming the file with
  its ``Content-Length``; any failure is ``ImageUploadFailed`` and a
  best-effort ``DELETE`` of whatever the server may have kept.

``put`` returns the new image's ``image_meta``: ``id``, ``disk_format``,
``size`` and ``checksum`` (``sha256:<hex>`` of the stored bytes).
"""

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import ssl
import tempfile
import threading
import urllib.parse

from compute_agent import exception
from compute_agent import rules
from compute_agent.virt import disks

LOG = logging.getLogger(__name__)
CHUNK = 1 << 20
FILE_MODE = 0o644             # the agent's cache (and QEMU) read images
_ZERO = bytes(CHUNK)


def base_url(conf):
    return conf.images.image_store_url.rstrip('/')


def url_for(conf, image_id, field='image_id'):
    """``<base>/<image_id>``: the URL of an image id in the store."""
    rules.IMAGE_ID.require(image_id, field)
    return f"{base_url(conf)}/{urllib.parse.quote(image_id, safe='')}"


def for_conf(conf):
    """The writer of the configured store (``FileStore``/``HttpStore``)."""
    scheme = urllib.parse.urlsplit(conf.images.image_store_url).scheme.lower()
    if scheme == 'file':
        return FileStore(conf)
    if scheme in ('http', 'https'):
        return HttpStore(conf)
    raise exception.ConfigError(group='images', option='image_store_url',
                                reason=f'cannot write images to a {scheme} store')


def sha256_of(path):
    """``(sha256 hex, size)`` of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, 'rb') as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _meta(image_id, disk_format, digest, size):
    return {'id': image_id, 'disk_format': disk_format, 'size': size,
            'checksum': 'sha256:' + digest}


def _exists(image_id):
    return exception.InvalidRequest('image_id',
                                    'an image with this id exists in the image store')


class FileStore:
    """A ``file://`` store directory."""

    def __init__(self, conf):
        self.conf = conf
        parts = urllib.parse.urlsplit(conf.images.image_store_url)
        if parts.netloc not in ('', 'localhost'):
            raise exception.ConfigError(group='images', option='image_store_url',
                                        reason='a file URL must be local')
        self.dir = os.path.realpath(urllib.parse.unquote(parts.path))

    def path_for(self, image_id):
        """``<store>/<image_id>``; the id rule keeps it inside the store."""
        rules.IMAGE_ID.require(image_id, 'image_id')
        path = os.path.join(self.dir, image_id)
        # A valid id has no '/' and is never '.' or '..': belt and braces.
        if os.path.dirname(path) != self.dir:
            raise exception.InvalidRequest('image_id', 'would leave the image store')
        return path

    def check_new(self, image_id):
        """InvalidRequest (``image_id``) if it exists; ImageUploadFailed
        when the store cannot take a new file. Writes nothing."""
        path = self.path_for(image_id)
        if os.path.lexists(path):
            raise _exists(image_id)
        reason = self._unwritable()
        if reason:
            raise exception.ImageUploadFailed(image_id=image_id, reason=reason)

    def _unwritable(self):
        if not os.path.isdir(self.dir):
            return f'the image store {self.dir} is not a directory'
        if os.statvfs(self.dir).f_flag & os.ST_RDONLY:
            return f'the image store {self.dir} is on a read-only file system'
        if not os.access(self.dir, os.W_OK | os.X_OK):
            return f'the image store {self.dir} is not writable'
        return None

    def put(self, image_id, src, disk_format):
        """Store the complete file ``src`` as ``image_id``; its image_meta."""
        dest = self.path_for(image_id)
        # Temps of this id are a killed agent's (no image is a temp).
        disks.remove_stale_temps(self.dir, [image_id])
        tmp = None
        try:
            try:
                tmp, digest, size = self._stage(image_id, src)
                os.chmod(tmp, FILE_MODE)
                os.link(tmp, dest)      # never over an existing image
            except FileExistsError:
                raise _exists(image_id) from None
            except OSError as e:
                raise exception.ImageUploadFailed(
                    image_id=image_id, reason=f'{self.dir}: {e.strerror or e}') from None
            disks.fsync_dir(self.dir)
        finally:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        LOG.info('Stored image %s (%d bytes) in %s', image_id, size, self.dir)
        return _meta(image_id, disk_format, digest, size)

    def _stage(self, image_id, src):
        """A complete, fsynced copy of ``src`` under a temporary name in the
        store, with its sha256 and size: a hard link when on the same file
        system (hashed while a thread fsyncs it), else a copy hashed as it
        is read."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f'.{image_id}.', suffix='.part')
        os.close(fd)
        try:
            os.unlink(tmp)
            os.link(src, tmp)
            return (tmp, *_hash_and_sync(tmp))
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        try:
            digest, size = _sparse_copy(src, tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp, digest, size



class HttpStore:
    """An ``http(s)://`` store that takes ``PUT <base>/<image_id>``."""

    def __init__(self, conf):
        self.conf = conf

    def _connection(self, url):
        parts = urllib.parse.urlsplit(url)
        timeout = self.conf.images.upload_timeout
        if parts.scheme.lower() == 'https':
            return http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout,
                context=ssl.create_default_context()), parts
        return http.client.HTTPConnection(parts.hostname, parts.port,
                                          timeout=timeout), parts

    def _request(self, method, url, body=None, headers=None):
        conn, parts = self._connection(url)
        path = parts.path + ('?' + parts.query if parts.query else '')
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.reason
        finally:
            conn.close()

    def check_new(self, image_id):
        url = url_for(self.conf, image_id)
        try:
            status, reason = self._request('HEAD', url)
        except (OSError, http.client.HTTPException) as e:
            raise exception.ImageUploadFailed(
                image_id=image_id, reason=f'image store unreachable: {e}') from None
        if 200 <= status < 300:
            raise _exists(image_id)
        if status not in (404, 410):
            raise exception.ImageUploadFailed(
                image_id=image_id, reason=f'image store answered HEAD with {status} {reason}')

    def put(self, image_id, src, disk_format):
        url = url_for(self.conf, image_id)
        size = os.path.getsize(src)
        hasher = hashlib.sha256()
        try:
            with open(src, 'rb') as f:
                status, reason = self._request(
                    'PUT', url, body=_Hashing(f, hasher),
                    headers={'Content-Length': str(size),
                             'Content-Type': 'application/octet-stream',
                             'If-None-Match': '*'})
        except (OSError, http.client.HTTPException) as e:
            self._discard(url)
            raise exception.ImageUploadFailed(image_id=image_id,
                                              reason=f'PUT failed: {e}') from None
        if status == 412:
            raise _exists(image_id)
        if not 200 <= status < 300:
            self._discard(url)
            raise exception.ImageUploadFailed(
                image_id=image_id, reason=f'PUT answered {status} {reason}')
        LOG.info('Uploaded image %s (%d bytes) to the image store', image_id, size)
        return _meta(image_id, disk_format, hasher.hexdigest(), size)

    def _discard(self, url):
        """After a failed PUT: nothing of it may stay in the store."""
        try:
            self._request('DELETE', url)
        except (OSError, http.client.HTTPException) as e:
            LOG.warning('DELETE %s after a failed upload failed: %s', url, e)


class _Hashing:
    """A read-only stream that hashes what is read through it (http.client
    streams any object with ``read``)."""

    def __init__(self, f, hasher):
        self._f = f
        self._hasher = hasher

    def read(self, n=-1):
        chunk = self._f.read(n)
        self._hasher.update(chunk)
        return chunk


def _sparse_copy(src, dest):
    """Copy ``src`` to a new file ``dest`` (fsynced), runs of zeros as holes;
    ``(sha256 hex, size)`` of the bytes copied (one read for both)."""
    h = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(src, 'rb') as fin, os.fdopen(fd, 'wb') as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            if chunk == _ZERO[:len(chunk)]:
                fout.seek(len(chunk), os.SEEK_CUR)
            else:
                fout.write(chunk)
        size = fin.tell()
        fout.truncate(size)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest(), size


def _hash_and_sync(path):
    """``(sha256 hex, size)`` of ``path`` while a thread fsyncs it.

    A fresh copy (``qemu-img convert -t unsafe``) is still in the page cache,
    mostly dirty: the hash reads it from memory (CPU-bound) while the fsync
    writes it out (I/O-bound), so the two overlap instead of adding up
    (256 MiB here: ~0.12 s of fsync hidden behind ~0.3 s of hashing)."""
    errors = []

    def sync():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            errors.append(e)

    syncer = threading.Thread(target=sync, name='store-fsync', daemon=True)
    syncer.start()
    try:
        result = sha256_of(path)
    finally:
        syncer.join()
    if errors:
        raise errors[0]
    return result
