"""The image store writer (images/store.py): file:// and http:// stores.

The http store is tested against a real HTTP server (http.server in a
thread) that keeps PUT bodies.
"""

import errno
import hashlib
import http.server
import os
import threading
import urllib.parse

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.images import cache as cache_mod
from compute_agent.images import store


def make_conf(tmp_path, url):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], default_config_files=[])
    conf.set_override('instances_path', str(tmp_path / 'instances'))
    conf.set_override('image_store_url', url, group='images')
    conf.set_override('upload_timeout', 5, group='images')
    return conf


@pytest.fixture
def store_dir(tmp_path):
    d = tmp_path / 'store'
    d.mkdir()
    return d


@pytest.fixture
def fstore(tmp_path, store_dir):
    return store.for_conf(make_conf(tmp_path, f'file://{store_dir}'))


def src_file(tmp_path, data=b'disk-bytes' * 1000, name='copy.part'):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def temps(store_dir):
    return [p.name for p in store_dir.iterdir() if p.name.startswith('.')]


# -- URLs: one place ------------------------------------------------------------------

def test_url_for_quotes_the_id_and_the_cache_uses_it(tmp_path):
    conf = make_conf(tmp_path, 'http://store.example/images/')
    assert store.url_for(conf, 'a~b.c') == 'http://store.example/images/a~b.c'
    assert cache_mod.ImageCache(conf).resolve_url({'id': 'img-1'}) == \
        'http://store.example/images/img-1'
    with pytest.raises(exception.InvalidRequest) as ei:
        store.url_for(conf, '../x')
    assert ei.value.field == 'image_id'


def test_a_store_of_another_scheme_cannot_be_written(tmp_path):
    with pytest.raises(exception.ConfigError):
        store.for_conf(make_conf(tmp_path, 'ftp://host/images'))


# -- file:// ---------------------------------------------------------------------------

def test_put_stores_the_file_with_its_sha256(tmp_path, fstore, store_dir):
    data = os.urandom(3 << 20)
    meta = fstore.put('snap-1', src_file(tmp_path, data), 'qcow2')
    assert meta == {'id': 'snap-1', 'disk_format': 'qcow2', 'size': len(data),
                    'checksum': 'sha256:' + hashlib.sha256(data).hexdigest()}
    assert (store_dir / 'snap-1').read_bytes() == data
    assert (store_dir / 'snap-1').stat().st_mode & 0o777 == 0o644
    assert temps(store_dir) == []


def test_put_never_overwrites_an_image(tmp_path, fstore, store_dir):
    (store_dir / 'snap-1').write_bytes(b'original')
    with pytest.raises(exception.InvalidRequest) as ei:
        fstore.check_new('snap-1')
    assert ei.value.field == 'image_id'
    with pytest.raises(exception.InvalidRequest):      # a racing writer
        fstore.put('snap-1', src_file(tmp_path), 'raw')
    assert (store_dir / 'snap-1').read_bytes() == b'original'
    assert temps(store_dir) == []


def test_a_symlink_in_the_store_counts_as_existing(tmp_path, fstore, store_dir):
    (store_dir / 'snap-1').symlink_to(tmp_path / 'elsewhere')
    with pytest.raises(exception.InvalidRequest):
        fstore.check_new('snap-1')
    with pytest.raises(exception.InvalidRequest):
        fstore.put('snap-1', src_file(tmp_path), 'raw')
    assert not (tmp_path / 'elsewhere').exists()


@pytest.mark.parametrize('image_id', ['../x', '..', '.', 'a/b', '', '.hidden'])
def test_ids_that_would_leave_the_store_are_refused(tmp_path, fstore, store_dir, image_id):
    with pytest.raises(exception.InvalidRequest) as ei:
        fstore.put(image_id, src_file(tmp_path), 'raw')
    assert ei.value.field == 'image_id'
    assert list(store_dir.iterdir()) == []


def test_across_file_systems_the_copy_is_sparse_and_complete(tmp_path, fstore, store_dir,
                                                             monkeypatch):
    data = b'\0' * (4 << 20) + b'tail' + b'\0' * 100
    src = src_file(tmp_path, data)
    real_link = os.link

    def link(a, b):     # the source is on another file system
        if os.path.abspath(a) == str(src):
            raise OSError(errno.EXDEV, 'Invalid cross-device link')
        return real_link(a, b)
    monkeypatch.setattr(os, 'link', link)
    meta = fstore.put('snap-2', src, 'raw')
    dest = store_dir / 'snap-2'
    assert dest.read_bytes() == data
    assert meta['checksum'] == 'sha256:' + hashlib.sha256(data).hexdigest()
    assert dest.stat().st_blocks * 512 < len(data)      # holes kept
    assert os.path.samefile(src, src) and not os.path.samefile(src, dest)


def test_a_failed_write_leaves_nothing(tmp_path, fstore, store_dir, monkeypatch):
    src = src_file(tmp_path)
    monkeypatch.setattr(os, 'link', lambda a, b: (_ for _ in ()).throw(
        OSError(errno.EXDEV, 'cross-device')))

    def broken_copy(a, b):
        with open(b, 'wb') as f:
            f.write(b'half')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(store, '_sparse_copy', broken_copy)
    with pytest.raises(exception.ImageUploadFailed) as ei:
        fstore.put('snap-3', src, 'raw')
    assert 'No space left' in str(ei.value)
    assert list(store_dir.iterdir()) == []


def test_a_linked_copy_is_hashed_while_fsynced_and_a_failed_fsync_stores_nothing(
        tmp_path, fstore, store_dir, monkeypatch):
    """The hash and the fsync of a linked copy run at once; the image is
    published only when both succeeded."""
    src = src_file(tmp_path)
    data = src.read_bytes()
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(threading.current_thread().name)
        return real_fsync(fd)
    monkeypatch.setattr(os, 'fsync', fsync)
    meta = fstore.put('snap-6', src, 'raw')
    assert meta['checksum'] == 'sha256:' + hashlib.sha256(data).hexdigest()
    assert meta['size'] == len(data)
    assert 'store-fsync' in synced      # the copy's fsync ran in its thread

    def failing(fd):
        if threading.current_thread().name == 'store-fsync':
            raise OSError(errno.EIO, 'Input/output error')
        return real_fsync(fd)
    monkeypatch.setattr(os, 'fsync', failing)
    with pytest.raises(exception.ImageUploadFailed) as ei:
        fstore.put('snap-7', src_file(tmp_path, name='copy2.part'), 'raw')
    assert 'Input/output error' in str(ei.value)
    assert sorted(p.name for p in store_dir.iterdir()) == ['snap-6']


def test_stale_temporaries_of_the_id_are_removed(tmp_path, fstore, store_dir):
    (store_dir / '.snap-4.abc123.part').write_bytes(b'killed agent')
    (store_dir / '.other.abc123.part').write_bytes(b'another write')
    fstore.put('snap-4', src_file(tmp_path), 'raw')
    assert sorted(p.name for p in store_dir.iterdir()) == ['.other.abc123.part', 'snap-4']


def test_a_store_that_cannot_be_written_is_a_clear_error(tmp_path):
    missing = store.for_conf(make_conf(tmp_path, f'file://{tmp_path}/nowhere'))
    with pytest.raises(exception.ImageUploadFailed) as ei:
        missing.check_new('snap-5')
    assert 'not a directory' in str(ei.value)
    assert not (tmp_path / 'nowhere').exists()


# -- http:// ---------------------------------------------------------------------------

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(('127.0.0.1', 0), _Handler)
        self.images, self.fail, self.requests = {}, set(), []


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _id(self):
        return urllib.parse.unquote(self.path.rsplit('/', 1)[1])

    def do_HEAD(self):
        self.server.requests.append(('HEAD', self._id()))
        self.send_response(200 if self._id() in self.server.images else 404)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def do_DELETE(self):
        self.server.requests.append(('DELETE', self._id()))
        self.server.images.pop(self._id(), None)
        self.send_response(204)
        self.end_headers()

    def do_PUT(self):
        self.server.requests.append(('PUT', self._id()))
        body = self.rfile.read(int(self.headers['Content-Length']))
        if self._id() in self.server.fail:
            self.server.images[self._id()] = body[:10]      # a server that kept junk
            self.send_error(507, 'Insufficient Storage')
            return
        self.server.images[self._id()] = body
        self.send_response(201)
        self.send_header('Content-Length', '0')
        self.end_headers()


@pytest.fixture
def server():
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def hstore(tmp_path, server):
    return store.for_conf(make_conf(tmp_path, f'http://127.0.0.1:{server.server_port}/v1/'))


def test_http_put_streams_the_image(tmp_path, server, hstore):
    data = os.urandom(5 << 20)
    hstore.check_new('snap-h1')
    meta = hstore.put('snap-h1', src_file(tmp_path, data), 'raw')
    assert server.images['snap-h1'] == data
    assert meta == {'id': 'snap-h1', 'disk_format': 'raw', 'size': len(data),
                    'checksum': 'sha256:' + hashlib.sha256(data).hexdigest()}
    assert server.requests == [('HEAD', 'snap-h1'), ('PUT', 'snap-h1')]


def test_http_existing_image_is_refused(server, hstore):
    server.images['snap-h2'] = b'x'
    with pytest.raises(exception.InvalidRequest) as ei:
        hstore.check_new('snap-h2')
    assert ei.value.field == 'image_id'


def test_http_upload_failure_leaves_nothing(tmp_path, server, hstore):
    server.fail.add('snap-h3')
    with pytest.raises(exception.ImageUploadFailed) as ei:
        hstore.put('snap-h3', src_file(tmp_path), 'raw')
    assert '507' in str(ei.value)
    assert 'snap-h3' not in server.images
    assert server.requests[-1] == ('DELETE', 'snap-h3')


def test_http_store_unreachable(tmp_path, server, hstore):
    port = server.server_port
    server.shutdown()
    server.server_close()
    dead = store.for_conf(make_conf(tmp_path, f'http://127.0.0.1:{port}/'))
    with pytest.raises(exception.ImageUploadFailed):
        dead.check_new('snap-h4')
    with pytest.raises(exception.ImageUploadFailed):
        dead.put('snap-h4', src_file(tmp_path), 'raw')
