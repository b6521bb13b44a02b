"""Image cache and sources, with real files, a real HTTP server, real processes."""

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error

import hypothesis
import pytest
import tenacity
from hypothesis import strategies as st
from oslo_config import cfg
from stevedore import extension

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.images import cache as cache_mod
from compute_agent.images import sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_conf(tmp_path, store_url=None):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], default_config_files=[])
    # oslo.config shares a module-level OptGroup's options between
    # ConfigOpts objects, so [images] overrides of earlier tests leak here.
    for opt in agent_conf.images.opts:
        conf.clear_override(opt.dest, group='images')
    store = tmp_path / 'store'
    store.mkdir(exist_ok=True)
    conf.set_override('instances_path', str(tmp_path / 'instances'))
    conf.set_override('image_store_url', store_url or f'file://{store}', group='images')
    return conf


@pytest.fixture
def conf(tmp_path):
    return make_conf(tmp_path)


def new_cache(conf, **kw):
    c = cache_mod.ImageCache(conf, **kw)
    c.retry_wait = tenacity.wait_none()
    return c


def put_image(tmp_path, image_id, data):
    path = tmp_path / 'store' / image_id
    path.write_bytes(data)
    return path


def base_listing(conf):
    base = os.path.join(conf.instances_path, '_base')
    return sorted(os.listdir(base)) if os.path.isdir(base) else []


class CountingSource(sources.FileSource):
    """A FileSource that is slow to open and fails the first ``fail`` times."""

    def __init__(self, conf, delay=0.0, fail=0):
        super().__init__(conf)
        self.delay, self.fail, self.opens = delay, fail, 0

    def open(self, url):
        self.opens += 1
        time.sleep(self.delay)
        if self.opens <= self.fail:
            raise OSError('flaky')
        return super().open(url)


def test_miss_then_hit(conf, tmp_path):
    data = os.urandom(3 * cache_mod.CHUNK + 17)
    put_image(tmp_path, 'img1', data)
    cache = new_cache(conf)
    path = cache.fetch({'id': 'img1', 'disk_format': 'raw'})
    sha1 = hashlib.sha1(b'img1').hexdigest()
    assert path == os.path.join(os.path.realpath(conf.instances_path), '_base', sha1)
    assert open(path, 'rb').read() == data
    assert oct(os.stat(path).st_mode & 0o777) == '0o644'
    assert cache.downloads == 1
    assert cache.fetch('img1') == path          # a bare id works too
    assert cache.downloads == 1
    assert not [n for n in base_listing(conf) if n.endswith('.part')]


@pytest.mark.parametrize('algo', ['md5', 'sha256'])
def test_checksum_ok(conf, tmp_path, algo):
    data = b'x' * 100000
    put_image(tmp_path, 'img', data)
    digest = hashlib.new(algo, data).hexdigest()
    checksum = digest if algo == 'md5' else 'sha256:' + digest.upper()
    cache = new_cache(conf)
    path = cache.fetch({'id': 'img', 'checksum': checksum})
    assert open(path, 'rb').read() == data


@pytest.mark.parametrize('checksum', ['0' * 32, 'sha256:' + '0' * 64])
def test_checksum_mismatch_leaves_nothing(conf, tmp_path, checksum):
    put_image(tmp_path, 'img', b'data' * 1000)
    cache = new_cache(conf)
    with pytest.raises(exception.ImageChecksumMismatch) as ei:
        cache.fetch({'id': 'img', 'checksum': checksum})
    assert ei.value.kwargs['expected'] == checksum
    assert cache.downloads == 1                 # not retried
    assert [n for n in base_listing(conf) if not n.endswith('.lock')] == []


@pytest.mark.parametrize('checksum', ['abc', 'sha1:' + '0' * 40, 'sha256:xyz', 42])
def test_checksum_malformed(conf, tmp_path, checksum):
    put_image(tmp_path, 'img', b'data')
    with pytest.raises(exception.InvalidRequest) as ei:
        new_cache(conf).fetch({'id': 'img', 'checksum': checksum})
    assert ei.value.field == 'image_meta.checksum'


def test_verified_checksum_is_trusted(conf, tmp_path, monkeypatch):
    data = b'abc' * 5000
    put_image(tmp_path, 'img', data)
    md5 = hashlib.md5(data).hexdigest()
    sha = 'sha256:' + hashlib.sha256(data).hexdigest()
    cache = new_cache(conf)
    cache.fetch({'id': 'img', 'checksum': md5})
    hashed = []
    real_hash = cache_mod._hash_file
    monkeypatch.setattr(cache_mod, '_hash_file',
                        lambda p, a: hashed.append(a) or real_hash(p, a))
    for _ in range(3):
        cache.fetch({'id': 'img', 'checksum': md5})
    assert hashed == []                          # trusted, not rehashed
    cache.fetch({'id': 'img', 'checksum': sha})  # new algorithm: hashed once
    cache.fetch({'id': 'img', 'checksum': sha})
    assert hashed == ['sha256']
    with pytest.raises(exception.ImageChecksumMismatch):
        cache.fetch({'id': 'img', 'checksum': 'f' * 32})
    assert cache.downloads == 1
    assert os.path.exists(cache.path_for('img'))  # a wrong request keeps the cache


def test_missing_image_not_retried(conf):
    conf.set_override('download_retries', 3, group='images')
    cache = new_cache(conf)
    with pytest.raises(exception.ImageNotFound) as ei:
        cache.fetch('nope')
    assert ei.value.kwargs['image_id'] == 'nope'
    assert cache.downloads == 1
    assert [n for n in base_listing(conf) if not n.endswith('.lock')] == []


def test_transient_errors_retried(conf, tmp_path):
    put_image(tmp_path, 'img', b'ok')
    conf.set_override('download_retries', 2, group='images')
    src = CountingSource(conf, fail=2)
    cache = new_cache(conf, sources={'file': src})
    assert open(cache.fetch('img'), 'rb').read() == b'ok'
    assert cache.downloads == 3


def test_retries_exhausted(conf, tmp_path):
    put_image(tmp_path, 'img', b'ok')
    conf.set_override('download_retries', 1, group='images')
    cache = new_cache(conf, sources={'file': CountingSource(conf, fail=5)})
    with pytest.raises(OSError, match='flaky'):
        cache.fetch('img')
    assert cache.downloads == 2
    assert [n for n in base_listing(conf) if not n.endswith('.lock')] == []


def test_short_download_is_transient(conf, tmp_path):
    put_image(tmp_path, 'img', b'0123456789')

    class Liar(sources.FileSource):
        calls = 0

        def open(self, url):
            stream, size = super().open(url)
            Liar.calls += 1
            return stream, size + (5 if Liar.calls == 1 else 0)

    cache = new_cache(conf, sources={'file': Liar(conf)})
    assert open(cache.fetch('img'), 'rb').read() == b'0123456789'
    assert cache.downloads == 2


@pytest.mark.parametrize('image_id', ['../x', 'a/b', '', '.hidden', 'x\n', '..', 'a b', None, 7])
def test_bad_image_ids(conf, image_id):
    cache = new_cache(conf)
    with pytest.raises(exception.InvalidRequest) as ei:
        cache.fetch({'id': image_id})
    assert ei.value.field == 'image_meta.id'
    assert not os.path.exists(conf.instances_path)


def test_disallowed_scheme(conf, tmp_path):
    conf.set_override('allowed_schemes', ['file'], group='images')
    cache = new_cache(conf)
    with pytest.raises(exception.InvalidRequest) as ei:
        cache.fetch({'id': 'img', 'location': 'http://example.com/img'})
    assert ei.value.field == 'image_meta.location'
    assert ei.value.reason == 'scheme http not allowed'
    with pytest.raises(exception.InvalidRequest):
        cache.fetch({'id': 'img', 'location': 'ftp://example.com/img'})
    assert cache.downloads == 0


def test_file_location_inside_store(conf, tmp_path):
    (tmp_path / 'store' / 'sub').mkdir()
    (tmp_path / 'store' / 'sub' / 'real').write_bytes(b'inside')
    cache = new_cache(conf)
    path = cache.fetch({'id': 'img', 'location': f'file://{tmp_path}/store/sub/real'})
    assert open(path, 'rb').read() == b'inside'


def test_file_location_outside_store(conf, tmp_path):
    (tmp_path / 'secret').write_bytes(b'secret')
    os.symlink(tmp_path / 'secret', tmp_path / 'store' / 'link')
    cache = new_cache(conf)
    for loc in ['file:///etc/passwd', f'file://{tmp_path}/store/../secret',
                f'file://{tmp_path}/store/link', f'file://{tmp_path}/store',
                f'file://{tmp_path}/store%2F..%2Fsecret', 'file://otherhost/x']:
        with pytest.raises(exception.InvalidRequest) as ei:
            cache.fetch({'id': 'img', 'location': loc})
        assert ei.value.field == 'image_meta.location', loc
    assert cache.downloads == 0
    assert base_listing(conf) == []


def test_file_location_needs_file_store(tmp_path):
    conf = make_conf(tmp_path, store_url='http://127.0.0.1:1/images')
    (tmp_path / 'store' / 'x').write_bytes(b'x')
    with pytest.raises(exception.InvalidRequest):
        new_cache(conf).fetch({'id': 'img', 'location': f'file://{tmp_path}/store/x'})


def test_ten_threads_one_download(conf, tmp_path):
    put_image(tmp_path, 'img', os.urandom(1 << 20))
    src = CountingSource(conf, delay=0.3)
    cache = new_cache(conf, sources={'file': src})
    barrier = threading.Barrier(10)
    results = []

    def worker():
        barrier.wait()
        results.append(cache.fetch('img'))

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 10 and len(set(results)) == 1
    assert cache.downloads == 1 and src.opens == 1


CHILD = textwrap.dedent('''
    import os, sys, time
    from oslo_config import cfg
    from compute_agent import conf as agent_conf
    from compute_agent.images import cache, sources

    inst, store, counter, go = sys.argv[1:]

    class Counting(sources.FileSource):
        def open(self, url):
            with open(counter, 'a') as f:
                f.write('%d\\n' % os.getpid())
            time.sleep(0.5)
            return super().open(url)

    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], default_config_files=[])
    conf.set_override('instances_path', inst)
    conf.set_override('image_store_url', 'file://' + store, group='images')
    c = cache.ImageCache(conf, sources={'file': Counting(conf)})
    open(go + '.ready.%d' % os.getpid(), 'w').close()
    while not os.path.exists(go):
        time.sleep(0.005)
    print(c.fetch('img'))
''')


def test_threads_and_processes_one_download(conf, tmp_path):
    data = os.urandom(1 << 20)
    put_image(tmp_path, 'img', data)
    counter, go = tmp_path / 'counter', tmp_path / 'go'
    script = tmp_path / 'child.py'
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen(
        [sys.executable, str(script), conf.instances_path, str(tmp_path / 'store'),
         str(counter), str(go)], stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(4)]

    class Counting(sources.FileSource):
        def open(self, url):
            with open(counter, 'a') as f:
                f.write(f'{os.getpid()}\n')
            time.sleep(0.5)
            return super().open(url)

    cache = new_cache(conf, sources={'file': Counting(conf)})
    deadline = time.monotonic() + 30       # wait until every child polls
    while len(list(tmp_path.glob('go.ready.*'))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch('img')))
               for _ in range(10)]
    go.touch()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert set(outs) | set(results) == {cache.path_for('img')}
    assert len(counter.read_text().splitlines()) == 1
    assert open(results[0], 'rb').read() == data


def test_source_plugin_via_entry_point(tmp_path, monkeypatch):
    """Another image service is added by registering an entry point."""
    plug = tmp_path / 'plug'
    (plug / 'memsource_plugin-1.0.dist-info').mkdir(parents=True)
    (plug / 'memsource_plugin-1.0.dist-info' / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: memsource-plugin\nVersion: 1.0\n')
    (plug / 'memsource_plugin-1.0.dist-info' / 'entry_points.txt').write_text(
        '[compute_agent.image_sources]\nmem = memsource_mod:MemSource\n')
    (plug / 'memsource_mod.py').write_text(textwrap.dedent('''
        import io
        from compute_agent.images.sources import ImageSource

        class MemSource(ImageSource):
            def open(self, url):
                data = url.encode()
                return io.BytesIO(data), len(data)
    '''))
    monkeypatch.syspath_prepend(str(plug))
    # stevedore scans entry points once per process (a real plugin is
    # installed before the agent starts): make it look again.
    monkeypatch.setattr(extension.ExtensionManager, 'ENTRY_POINT_CACHE', {})
    conf = make_conf(tmp_path, store_url='mem://store')
    assert type(sources.get_source(conf, 'mem')).__name__ == 'MemSource'
    path = new_cache(conf).fetch('img')
    assert open(path, 'rb').read() == b'mem://store/img'


def test_unknown_scheme(tmp_path):
    conf = make_conf(tmp_path, store_url='gopher://x')
    with pytest.raises(exception.InvalidRequest):
        new_cache(conf).fetch('img')


@pytest.fixture
def http_store(tmp_path):
    store = tmp_path / 'store'
    store.mkdir(exist_ok=True)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith('/boom'):
                self.send_error(503)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(Handler, directory=str(store)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}', store
    server.shutdown()
    server.server_close()


def test_http_source(tmp_path, http_store, monkeypatch):
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    url, store = http_store
    data = os.urandom(5 * cache_mod.CHUNK + 3)
    (store / 'img').write_bytes(data)
    conf = make_conf(tmp_path, store_url=url)
    stream, size = sources.HttpSource(conf).open(url + '/img')
    with stream:                                   # streamed: read a piece
        assert size == len(data) and stream.read(10) == data[:10]
    cache = new_cache(conf)
    path = cache.fetch({'id': 'img', 'checksum': hashlib.md5(data).hexdigest()})
    assert open(path, 'rb').read() == data
    with pytest.raises(exception.ImageNotFound):
        cache.fetch('missing')
    assert cache.downloads == 2


def test_http_server_error_retried(tmp_path, http_store, monkeypatch):
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    url, _ = http_store
    conf = make_conf(tmp_path, store_url=url)
    conf.set_override('download_retries', 2, group='images')
    cache = new_cache(conf)
    with pytest.raises(urllib.error.HTTPError):
        cache.fetch({'id': 'x', 'location': url + '/boom'})
    assert cache.downloads == 3


@hypothesis.settings(max_examples=300, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(image_id=st.text(max_size=40) | st.sampled_from(
    ['..', '../x', '.', '/', '%2e%2e', '..%2F', 'a/../../b', '~', 'a\x00']))
def test_ids_never_escape(tmp_path, image_id):
    conf = make_conf(tmp_path)
    cache = new_cache(conf)
    root = os.path.realpath(conf.instances_path)
    store = os.path.realpath(tmp_path / 'store')
    try:
        path = cache.path_for(image_id)
        url = cache.resolve_url({'id': image_id})
    except exception.InvalidRequest:
        return
    assert os.path.dirname(path) == os.path.join(root, '_base')
    target = os.path.realpath(sources.urllib.parse.unquote(url[len('file://'):]))
    assert os.path.dirname(target) == store


@hypothesis.settings(max_examples=200, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(rel=st.text(alphabet='./%2Fa', max_size=20))
def test_locations_never_escape_store(tmp_path, rel):
    conf = make_conf(tmp_path)
    store = os.path.realpath(tmp_path / 'store')
    try:
        url = new_cache(conf).resolve_url({'id': 'i', 'location': f'file://{store}/{rel}'})
    except exception.InvalidRequest:
        return
    target = os.path.realpath(sources.urllib.parse.unquote(url[len('file://'):]))
    assert os.path.commonpath([store, target]) == store and target != store
