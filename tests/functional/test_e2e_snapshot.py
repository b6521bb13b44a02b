"""snapshot end to end: the real agent, libvirtd, QEMU (TCG) guests.

One guest (``src``) is shared: it writes a marker at byte 4096 of its root
disk (vda) at boot (the test guest's ``write_disk``); snapshots of it are
spawned as new guests, which print what they find there (``AT4096``).
Must-show 1 (round trip qcow2/raw, running/paused/stopped, the guest keeps
printing heartbeats, stored sha256 = reported), 6 (bad input writes nothing)
and the http(s) store (a real local HTTP server taking PUTs), an upload
failure and an agent killed mid-upload.

Both copy paths of a running guest (virt/snapshot.py): a disk under
``[libvirt] snapshot_pause_max_mb`` (the default 1024 MiB; the shared guest's
is small) is copied paused and the guest resumed, also when the copy fails
or the agent dies meanwhile; with the bound 0 the block copy runs.
"""

import hashlib
import http.server
import json
import os
import re
import secrets
import subprocess
import threading
import urllib.parse

import libvirt
import pytest

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        open_libvirt, run_agent, test_guest, tree_snapshot, wait_until)
    from tests.functional.agent_messages import new_request_id
except ImportError:
    from agent_fixture import (  # noqa: F401
        open_libvirt, run_agent, test_guest, tree_snapshot, wait_until)
    from agent_messages import new_request_id

from compute_agent.rpc.client import RemoteError
from compute_agent.virt import snapshot as snapshot_mod

TAG = secrets.token_hex(3)
MARK = f'snapmark-{TAG}'


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def image_info(path):
    return json.loads(subprocess.run(
        ['qemu-img', 'info', '-U', '--output=json', str(path)], check=True,
        capture_output=True, text=True, timeout=60).stdout)


def marker_in_image(path, fmt, tmp_path):
    """The line at byte 4096 of the image's disk contents."""
    raw = tmp_path / f'{os.path.basename(path)}.raw'
    subprocess.run(['qemu-img', 'convert', '-U', '-f', fmt, '-O', 'raw', str(path),
                    str(raw)], check=True, timeout=120)
    with open(raw, 'rb') as f:
        f.seek(4096)
        line = f.read(512).split(b'\n', 1)[0].decode(errors='replace')
    raw.unlink()
    return line


def domain_name(uuid):
    lv = open_libvirt()
    try:
        return lv.lookupByUUIDString(uuid).name()
    finally:
        lv.close()


def resumed_lines(agent, uuid, since=0):
    """The agent's 'resumed after the paused copy' lines about this guest."""
    name = domain_name(uuid)
    return re.findall(rf'Resumed {re.escape(name)} after [0-9.]+ s paused for the copy',
                      agent.log_file.read_text()[since:])


def restart_with(agent, **libvirt_opts):
    """Restart the agent with these [libvirt] options (none: the defaults)."""
    agent.stop()
    agent.write_config(**({'libvirt': libvirt_opts} if libvirt_opts else {}))
    agent.start()


def evict_disk(dom):
    """Drop the guest's root disk chain from the page cache: the copy reads
    it from disk (and so takes long enough to be caught paused)."""
    chain = [snapshot_mod.root_disk(dom, 'vda')[0]]
    while True:
        backing = image_info(chain[-1]).get('full-backing-filename')
        if not backing:
            break
        chain.append(backing)
    for p in chain:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def heartbeats(console):
    return [int(n) for n in re.findall(r'^HEARTBEAT (\d+)', console, re.M)]


def heartbeat_count(agent, uuid):
    """HEARTBEAT lines so far, once there is one. Counted, not compared by
    number: the log is appended across boots and each boot counts from 1."""
    wait_until(lambda: heartbeats(agent.console(uuid, tail_lines=10000)), 60,
               'a first heartbeat')
    return len(heartbeats(agent.console(uuid, tail_lines=10000)))


def reports_until(agent, uuid, since, event, request_id=None):
    """The reports since ``since`` until ``event``, only those of
    ``request_id`` when given."""
    agent.reports.wait(lambda r: r.get('instance_uuid') == uuid and r.get('event') == event,
                       30, event, since)
    return [(r['event'], r['vm_state'], r['task_state'], r['power_state'])
            for r in agent.reports.states(uuid, since)
            if request_id in (None, r.get('request_id'))]


@pytest.fixture(scope='module')
def agent(test_guest):  # noqa: F811 - the fixture of that name
    yield from run_agent(test_guest, 'snapshot')


@pytest.fixture(scope='module')
def src(agent):
    """The shared running guest; its root disk carries the marker."""
    inst, _record = agent.spawn(label='src', metadata={'write_disk': f'vda:{MARK}'})
    console = agent.wait_console(inst['uuid'], 'READY', timeout=90)
    assert 'WROTE-DISK vda' in console, console
    return inst


def snapshot(agent, uuid, image_id, **args):
    """The snapshot's result and its own reports: the last report of the
    call before it may reach this process after that call's reply (they
    travel on different queues)."""
    since, rid = agent.reports.mark(), new_request_id()
    meta = agent.call('snapshot', request_id=rid, instance_uuid=uuid,
                      image_id=image_id, **args)
    return meta, reports_until(agent, uuid, since, 'snapshot.end', rid)


def check_stored(agent, meta, image_id, fmt):
    path = agent.images / image_id
    assert meta['id'] == image_id and meta['disk_format'] == fmt
    assert meta['checksum'] == 'sha256:' + sha256_file(path)
    assert meta['size'] == os.path.getsize(path)
    info = image_info(path)
    assert info['format'] == fmt
    assert 'backing-filename' not in info and 'full-backing-filename' not in info
    return path


def spawn_from(agent, meta, label):
    inst = agent.make_instance(label, image_ref=meta['id'])
    inst, record = agent.spawn(instance=inst, image_meta=dict(meta))
    assert record['vm_state'] == 'active'
    console = agent.wait_console(inst['uuid'], 'AT4096 vda', timeout=90)
    return inst, re.search(r'^AT4096 vda (\S+)', console, re.M).group(1)


# -- must-show 1 --------------------------------------------------------------------

def test_round_trip_of_a_running_guest_qcow2_and_raw(agent, src):
    uuid = src['uuid']
    agent.wait_console(uuid, 'HEARTBEAT', timeout=30)
    for fmt in ('qcow2', 'raw'):
        before = heartbeat_count(agent, uuid)
        image_id = f'snap-run-{fmt}-{TAG}'
        log_at = len(agent.log_file.read_text())
        meta, reports = snapshot(agent, uuid, image_id, disk_format=fmt)
        # Under the default bound: paused for the copy, then resumed.
        assert len(resumed_lines(agent, uuid, log_at)) == 1
        assert reports == [('snapshot.start', 'active', 'image_snapshot', 1),
                           ('snapshot.start', 'active', 'image_uploading', 1),
                           ('snapshot.end', 'active', None, 1)]
        check_stored(agent, meta, image_id, fmt)
        # The guest kept running: its heartbeat goes on.
        wait_until(lambda b=before: heartbeat_count(agent, uuid) > b,
                   30, 'a heartbeat after the snapshot')
        info = agent.get_info(uuid)
        assert (info['vm_state'], info['task_state'], info['power_state']) == ('active', None, 1)
        # A new guest from the image reads the marker the source wrote.
        new, found = spawn_from(agent, meta, f'from-{fmt}')
        assert found == MARK
        agent.destroy(new)
    # Nothing left behind in the instance directory.
    assert not list(agent.instance_dir(src).glob('snapshot-*'))


def test_paused_and_stopped_guests(agent, src, tmp_path):
    uuid = src['uuid']
    agent.call('pause', instance=src)
    try:
        image_id = f'snap-paused-{TAG}'
        meta, reports = snapshot(agent, uuid, image_id)
        assert reports == [('snapshot.start', 'paused', 'image_snapshot', 3),
                           ('snapshot.start', 'paused', 'image_uploading', 3),
                           ('snapshot.end', 'paused', None, 3)]
        path = check_stored(agent, meta, image_id, 'qcow2')
        assert marker_in_image(path, 'qcow2', tmp_path) == f'CA-GUEST {MARK}'
    finally:
        agent.call('unpause', instance=src)
    agent.call('power_off', instance=src, timeout=30)
    try:
        image_id = f'snap-stopped-{TAG}'
        meta, reports = snapshot(agent, uuid, image_id, disk_format='raw')
        assert reports == [('snapshot.start', 'stopped', 'image_snapshot', 4),
                           ('snapshot.start', 'stopped', 'image_uploading', 4),
                           ('snapshot.end', 'stopped', None, 4)]
        path = check_stored(agent, meta, image_id, 'raw')
        assert marker_in_image(path, 'raw', tmp_path) == f'CA-GUEST {MARK}'
        # quiesce true cannot freeze a guest that does not run: refused.
        with pytest.raises(RemoteError) as ei:
            agent.call('snapshot', instance_uuid=uuid, image_id=f'snap-q-{TAG}', quiesce=True)
        assert ei.value.exc_type == 'GuestAgentUnavailable'
        assert not (agent.images / f'snap-q-{TAG}').exists()
    finally:
        mark = agent.console_mark(uuid)
        agent.call('power_on', instance=src)
    agent.wait_console(uuid, 'READY', timeout=90, since=mark)


@pytest.fixture(scope='module')
def big(agent):
    """A running guest on a 256 MiB root image full of data (a copy takes
    long enough to kill the agent in the middle of it)."""
    path = agent.images / 'big-root'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(path), '256M'],
                   check=True, timeout=60)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 0 256M', str(path)],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    os.chmod(path, 0o644)
    inst = agent.make_instance('big', image_ref='big-root')
    inst, _ = agent.spawn(instance=inst, image_meta={'id': 'big-root',
                                                     'disk_format': 'qcow2'})
    try:
        agent.wait_console(inst['uuid'], 'READY', timeout=90)
        yield inst
    finally:
        agent.destroy(inst)
        for name in os.listdir(agent.images):
            if name == 'big-root' or name.startswith('snap-kill'):
                (agent.images / name).unlink(missing_ok=True)


def settled_after_kill(agent, inst, image_id, since):
    """The redelivered snapshot completed and nothing of the killed one is left."""
    uuid = inst['uuid']
    agent.reports.wait(lambda r: r.get('instance_uuid') == uuid
                       and r.get('event') == 'snapshot.end', 120,
                       'the redelivered snapshot', since)
    events = [r['event'] for r in agent.reports.states(uuid, since)]
    assert 'recover' in events
    info = agent.get_info(uuid)
    assert (info['vm_state'], info['task_state'], info['power_state']) == ('active', None, 1)
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(uuid)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert dom.blockJobInfo('vda', 0) == {}
    finally:
        lv.close()
    assert not list(agent.instance_dir(inst).glob('snapshot-*'))
    assert not [p for p in os.listdir(agent.images) if p.startswith('.')]
    assert image_info(agent.images / image_id)['format'] == 'qcow2'
    assert len(sha256_file(agent.images / image_id)) == 64


def test_bound_zero_takes_the_block_copy_and_a_kill_mid_copy_settles(agent, big):
    """With ``snapshot_pause_max_mb = 0`` the running guest is never paused:
    a block copy runs. SIGKILL once it has started: the guest runs on
    untouched, the restart cancels it and drops the partial files, the
    redelivery completes (by block copy again)."""
    uuid = big['uuid']
    restart_with(agent, snapshot_pause_max_mb=0)
    try:
        image_id = f'snap-killcopy-{TAG}'
        since = agent.reports.mark()
        log_at = len(agent.log_file.read_text())
        lv = open_libvirt()
        try:
            dom = lv.lookupByUUIDString(uuid)
            agent.cast('snapshot', instance_uuid=uuid, image_id=image_id)
            # Killed while QEMU's block copy runs.
            wait_until(lambda: dom.blockJobInfo('vda', 0), 60, 'the block copy',
                       interval=0.005)
            agent.kill()
            assert dom.blockJobInfo('vda', 0), 'the copy ended before the kill'
        finally:
            lv.close()
        agent.start()
        settled_after_kill(agent, big, image_id, since)
        assert 'Cancelled the block copy of vda' in agent.log_file.read_text()[log_at:]
        assert resumed_lines(agent, uuid, log_at) == []     # never paused
    finally:
        restart_with(agent)


def test_agent_killed_while_the_guest_is_paused_for_the_copy_resumes_it(agent, big):
    """Under the bound the guest is paused for the copy; SIGKILL then: the
    record's mark makes the restart resume the guest, the redelivery
    completes."""
    uuid = big['uuid']
    image_id = f'snap-killpause-{TAG}'
    since = agent.reports.mark()
    log_at = len(agent.log_file.read_text())
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(uuid)
        evict_disk(dom)
        agent.cast('snapshot', instance_uuid=uuid, image_id=image_id)
        wait_until(lambda: dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED, 60,
                   'the guest paused for the copy', interval=0.002)
        agent.kill()
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED, 'resumed before the kill'
    finally:
        lv.close()
    agent.start()
    settled_after_kill(agent, big, image_id, since)
    log = agent.log_file.read_text()[log_at:]
    assert f'Resumed {domain_name(uuid)}, paused for a snapshot when the agent stopped' in log
    # The redelivery paused and resumed it again.
    assert len(resumed_lines(agent, uuid, log_at)) == 1


def test_a_failure_during_the_paused_copy_leaves_the_guest_running(agent, src):
    """The copy fails while the guest is paused (its instance directory made
    immutable, so qemu-img cannot create the copy there): the guest is
    resumed, keeps printing, the states are as before, nothing is stored."""
    uuid = src['uuid']
    image_id = f'snap-failpaused-{TAG}'
    inst_dir = agent.instance_dir(src)
    before = heartbeat_count(agent, uuid)
    log_at = len(agent.log_file.read_text())
    subprocess.run(['chattr', '+i', str(inst_dir)], check=True, timeout=30)
    try:
        with pytest.raises(RemoteError) as ei:
            # No freeze: its mark would be the first write the directory
            # refuses, before the guest is paused.
            agent.call('snapshot', instance_uuid=uuid, image_id=image_id,
                       quiesce=False)
    finally:
        subprocess.run(['chattr', '-i', str(inst_dir)], check=True, timeout=30)
    assert 'qemu-img convert' in str(ei.value.value), ei.value
    assert len(resumed_lines(agent, uuid, log_at)) == 1     # it was paused
    lv = open_libvirt()
    try:
        assert lv.lookupByUUIDString(uuid).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        lv.close()
    info = agent.get_info(uuid)
    assert (info['vm_state'], info['task_state'], info['power_state']) == ('active', None, 1)
    wait_until(lambda: heartbeat_count(agent, uuid) > before,
               30, 'a heartbeat after the failed snapshot')
    assert not (agent.images / image_id).exists()
    assert not list(inst_dir.glob('snapshot-*'))


# -- must-show 6: bad input, nothing written --------------------------------------------

def around_store(agent):
    """The store and everything around it (the agent's log apart)."""
    tree = tree_snapshot(agent.root, exclude=[agent.state_path])
    tree.pop('agent.log', None)
    return tree


def _refused(agent, src, exc_type, field, image_id, **args):
    uuid = src['uuid']
    before_tree = around_store(agent)
    before = agent.get_info(uuid)
    since = agent.reports.mark()
    with pytest.raises(RemoteError) as ei:
        agent.call('snapshot', instance_uuid=uuid, image_id=image_id, **args)
    assert ei.value.exc_type == exc_type, ei.value
    assert field in str(ei.value.value), ei.value
    after = agent.get_info(uuid)
    assert (after['vm_state'], after['task_state'], after['power_state']) == (
        before['vm_state'], None, before['power_state'])
    assert around_store(agent) == before_tree
    assert not list(agent.instance_dir(src).glob('snapshot-*'))
    return since, ei.value


def test_existing_image_id_is_refused_and_nothing_written(agent, src):
    kernel_sum = sha256_file(agent.images / 'test-kernel')
    since, err = _refused(agent, src, 'InvalidRequest', 'image_id', 'test-kernel')
    assert 'exists' in str(err.value)
    assert sha256_file(agent.images / 'test-kernel') == kernel_sum
    states = reports_until(agent, src['uuid'], since, 'snapshot.error')
    assert states[-1] == ('snapshot.error', 'active', None, 1)


@pytest.mark.parametrize('image_id', ['../escaped', '..', 'a/b', '.hidden', '/etc/x'])
def test_image_id_escaping_the_store_is_refused(agent, src, image_id):
    _refused(agent, src, 'InvalidRequest', 'image_id', image_id)
    assert not (agent.root / 'escaped').exists()


def test_store_that_is_not_writable_is_refused(agent, src):
    store = str(agent.images)
    # Root ignores file modes: a read-only bind mount over the store.
    subprocess.run(['mount', '--bind', store, store], check=True, timeout=30)
    try:
        subprocess.run(['mount', '-o', 'remount,bind,ro', store], check=True, timeout=30)
        since, err = _refused(agent, src, 'ImageUploadFailed', 'read-only',
                              f'snap-ro-{TAG}')
    finally:
        subprocess.run(['umount', store], check=True, timeout=30)
    assert not (agent.images / f'snap-ro-{TAG}').exists()
    states = reports_until(agent, src['uuid'], since, 'snapshot.error')
    assert states[-1] == ('snapshot.error', 'active', None, 1)


# -- http(s) store ------------------------------------------------------------------------

class Store(http.server.ThreadingHTTPServer):
    """A tiny image store: GET/HEAD/PUT/DELETE of /<id>, in memory.

    A PUT is kept only when its whole body arrived. ``fail`` ids get a 500
    after their body; the first PUT of a ``stall`` id is held (never
    answered) until ``release`` is set, then dropped.
    """
    daemon_threads = True

    def __init__(self, files):
        super().__init__(('127.0.0.1', 0), _Handler)
        self.images = dict(files)
        self.fail, self.stall, self.stalled = set(), set(), threading.Event()
        self.release = threading.Event()
        self.puts = []


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _id(self):
        return urllib.parse.unquote(self.path.lstrip('/'))

    def do_GET(self, head=False):
        body = self.server.images.get(self._id())
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_DELETE(self):
        self.server.images.pop(self._id(), None)
        self.send_response(204)
        self.end_headers()

    def do_PUT(self):
        image_id = self._id()
        self.server.puts.append(image_id)
        if image_id in self.server.stall:
            self.server.stall.discard(image_id)
            self.server.stalled.set()
            self.server.release.wait(120)
            self.close_connection = True
            return
        length = int(self.headers['Content-Length'])
        body = self.rfile.read(length)
        if len(body) != length:
            return
        if image_id in self.server.fail:
            self.send_error(500, 'disk full')
            return
        if self.headers.get('If-None-Match') == '*' and image_id in self.server.images:
            self.send_error(412)
            return
        self.server.images[image_id] = body
        self.send_response(201)
        self.end_headers()


@pytest.fixture
def http_store(agent, src):
    files = {f: (agent.images / f).read_bytes()
             for f in ('test-kernel', 'test-ramdisk', 'test-root')}
    server = Store(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    agent.stop()
    agent.write_config(images={'image_store_url': f'http://127.0.0.1:{server.server_port}/'})
    agent.start()
    try:
        yield server
    finally:
        server.release.set()
        agent.stop()
        agent.write_config()
        agent.start()
        server.shutdown()
        server.server_close()


def test_http_store_put_failure_and_agent_killed_mid_upload(agent, src, http_store):
    uuid = src['uuid']
    # A PUT of the whole image, its sha256 as reported.
    image_id = f'snap-http-{TAG}'
    meta, reports = snapshot(agent, uuid, image_id)
    assert reports[-1] == ('snapshot.end', 'active', None, 1)
    body = http_store.images[image_id]
    assert meta['checksum'] == 'sha256:' + hashlib.sha256(body).hexdigest()
    assert meta['size'] == len(body)
    # An existing id is refused before anything is sent.
    puts = len(http_store.puts)
    with pytest.raises(RemoteError) as ei:
        agent.call('snapshot', instance_uuid=uuid, image_id=image_id)
    assert ei.value.exc_type == 'InvalidRequest' and 'image_id' in str(ei.value.value)
    assert len(http_store.puts) == puts
    # The store refuses the upload: ImageUploadFailed, nothing kept.
    failing = f'snap-fail-{TAG}'
    http_store.fail.add(failing)
    with pytest.raises(RemoteError) as ei:
        agent.call('snapshot', instance_uuid=uuid, image_id=failing)
    assert ei.value.exc_type == 'ImageUploadFailed'
    assert failing not in http_store.images
    info = agent.get_info(uuid)
    assert (info['vm_state'], info['task_state'], info['power_state']) == ('active', None, 1)
    assert not list(agent.instance_dir(src).glob('snapshot-*'))
    # The agent killed while uploading: after the restart the guest runs as
    # before, no partial image exists, and the redelivery completes.
    stalled = f'snap-kill-{TAG}'
    http_store.stall.add(stalled)
    since = agent.reports.mark()
    agent.cast('snapshot', instance_uuid=uuid, image_id=stalled)
    assert http_store.stalled.wait(60), 'the upload never started'
    agent.wait_state(uuid, 'active', 'image_uploading', since=since)
    agent.kill()
    assert stalled not in http_store.images
    http_store.release.set()
    agent.start()
    agent.reports.wait(lambda r: r.get('instance_uuid') == uuid
                       and r.get('event') == 'snapshot.end', 90, 'the redelivered snapshot',
                       since)
    assert stalled in http_store.images
    events = [(r['event'], r['task_state']) for r in agent.reports.states(uuid, since)]
    assert ('recover', None) in events
    info = agent.get_info(uuid)
    assert (info['vm_state'], info['task_state'], info['power_state']) == ('active', None, 1)
    assert not list(agent.instance_dir(src).glob('snapshot-*'))
