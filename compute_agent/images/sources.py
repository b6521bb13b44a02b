"""Where image bytes come from: one pluggable source per URL scheme.

The cache only knows ``ImageSource.open(url)``; sources are looked up by URL
scheme in the ``compute_agent.image_sources`` entry point group (through
``compute_agent.plugins``), so another image service (s3, rbd export, ...) is
added by registering an entry point, without touching the cache.
"""

import abc
import os
import urllib.error
import urllib.parse
import urllib.request

from compute_agent import exception
from compute_agent import plugins

NAMESPACE = plugins.IMAGE_SOURCES


class ImageSource(abc.ABC):
    """Opens an image URL for streaming.

    ``open`` returns ``(readable binary stream, size in bytes or None)``; the
    caller reads it in chunks and closes it. A missing image raises
    ``exception.ImageNotFound``; any ``OSError`` is treated as transient and
    retried by the cache.
    """

    def __init__(self, conf):
        self.conf = conf

    @abc.abstractmethod
    def open(self, url):
        """Return ``(stream, size_or_None)`` for ``url``."""


class FileSource(ImageSource):
    """file:// URLs: a local or NFS-mounted image store."""

    def open(self, url):
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ('', 'localhost'):
            raise exception.ImageNotFound(
                image_id=url, reason='file URL names a remote host')
        path = urllib.parse.unquote(parts.path)
        try:
            stream = open(path, 'rb')  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise exception.ImageNotFound(
                image_id=url, reason='no such file') from None
        size = os.fstat(stream.fileno()).st_size
        return stream, size


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): never let a server send us to ftp."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ('http', 'https'):
            raise urllib.error.HTTPError(
                newurl, code, f'redirect to {scheme} refused', headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpSource(ImageSource):
    """http(s):// URLs, streamed with urllib.

    ``download_timeout`` applies to every socket operation, so it bounds how
    long a download may stall, not how long it may take in total.
    """

    def __init__(self, conf):
        super().__init__(conf)
        self._opener = urllib.request.build_opener(_HttpOnlyRedirects)

    def open(self, url):
        timeout = self.conf.images.download_timeout
        try:
            resp = self._opener.open(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in (404, 410):
                raise exception.ImageNotFound(
                    image_id=url, reason=f'HTTP {e.code}') from None
            if 400 <= e.code < 500:
                # Retrying a refusal does not help; report it as not found
                # with the server's reason rather than as a transient error.
                raise exception.ImageNotFound(
                    image_id=url,
                    reason=f'HTTP {e.code} {e.reason}') from None
            raise
        length = resp.headers.get('Content-Length')
        size = int(length) if length and length.isdigit() else None
        return resp, size


def get_source(conf, scheme, field='image_meta.location'):
    """The source registered for ``scheme`` (cached per conf).

    Raises ``InvalidRequest`` naming ``field`` when nothing serves the scheme.
    """
    scheme = scheme.lower() if isinstance(scheme, str) else scheme
    return plugins.load(NAMESPACE, scheme, field, conf)
