"""virt/snapshot.py's policy on the test:///default driver (real qemu-img,
real files): a running guest under the bound is paused, copied and resumed
(also when the copy fails); bound 0 or a larger disk takes the block copy;
recovery resumes only a guest the snapshot paused."""

import contextlib
import json
import subprocess

import libvirt
import pytest

from compute_agent import exception
from compute_agent.virt import snapshot

MIB = 1 << 20


def make_qcow2(path, mb=8, data_mb=2):
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(path), f'{mb}M'],
                   check=True, timeout=60)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', f'write -P 0x5a 0 {data_mb}M',
                    str(path)], check=True, timeout=60, stdout=subprocess.DEVNULL)


@pytest.fixture
def conn():
    c = libvirt.open('test:///default')
    yield c
    c.close()


@pytest.fixture
def dom(conn, tmp_path):
    disk = tmp_path / 'disk.qcow2'
    make_qcow2(disk)
    name = f'snapcopy-{tmp_path.name}'[:60]
    xml = f"""<domain type='test'><name>{name}</name><memory>65536</memory>
      <os><type>hvm</type></os><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
      </devices></domain>"""
    d = conn.createXML(xml, 0)
    yield d
    with contextlib.suppress(libvirt.libvirtError):
        d.destroy()


class Recorder:
    def __init__(self):
        self.events = []

    def quiesced(self):
        @contextlib.contextmanager
        def cm():
            self.events.append('freeze')
            try:
                yield
            finally:
                self.events.append('thaw')
        return cm()

    def on_pause(self):
        self.events.append('mark')


def test_running_guest_under_the_bound_is_paused_copied_and_resumed(dom, tmp_path):
    rec = Recorder()
    dest = tmp_path / 'out.part'
    seen = []
    real_suspend = dom.suspend

    def suspend():
        seen.append(dom.state()[0])
        real_suspend()
        rec.events.append('paused')
    dom.suspend = suspend
    snapshot.copy_disk(dom, 'vda', str(dest), 'raw', rec.quiesced, 64 * MIB, rec.on_pause)
    assert rec.events == ['mark', 'freeze', 'paused', 'thaw']
    assert seen == [libvirt.VIR_DOMAIN_RUNNING]
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    info = json.loads(subprocess.run(['qemu-img', 'info', '--output=json', str(dest)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info['format'] == 'raw' and info['virtual-size'] == 8 * MIB
    with open(dest, 'rb') as f:
        assert f.read(16) == b'\x5a' * 16


def test_a_failed_copy_while_paused_resumes_the_guest(dom, tmp_path):
    rec = Recorder()
    dest = tmp_path / 'missing-dir' / 'out.part'      # qemu-img cannot create it
    with pytest.raises(exception.AgentError) as ei:
        snapshot.copy_disk(dom, 'vda', str(dest), 'qcow2', rec.quiesced, 64 * MIB,
                           rec.on_pause)
    assert 'qemu-img convert' in str(ei.value)
    assert rec.events == ['mark', 'freeze', 'thaw']
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert not dest.exists()


@pytest.mark.parametrize('bound', [0, 1])      # never pause; a disk larger than the bound
def test_bound_zero_or_a_larger_disk_takes_the_block_copy(dom, tmp_path, monkeypatch, bound):
    taken = []
    monkeypatch.setattr(snapshot, '_block_copy', lambda *a: taken.append(a[1]))
    rec = Recorder()
    snapshot.copy_disk(dom, 'vda', str(tmp_path / 'out.part'), 'qcow2', rec.quiesced,
                       bound, rec.on_pause)
    assert taken == ['vda'] and rec.events == []
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_a_paused_guest_is_not_paused_again(dom, tmp_path, monkeypatch):
    """A guest the user paused is not the snapshot's to resume."""
    taken = []
    monkeypatch.setattr(snapshot, '_block_copy', lambda *a: taken.append(a[1]))
    dom.suspend()
    snapshot.copy_disk(dom, 'vda', str(tmp_path / 'out.part'), 'qcow2',
                       contextlib.nullcontext, 64 * MIB, None)
    assert taken == ['vda']
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED


def test_allocated_counts_the_whole_chain(tmp_path):
    base = tmp_path / 'base.qcow2'
    make_qcow2(base, mb=16, data_mb=4)
    top = tmp_path / 'top.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', str(base), '-F',
                    'qcow2', str(top)], check=True, timeout=60)
    def actual(path):
        return json.loads(subprocess.run(
            ['qemu-img', 'info', '--output=json', str(path)], check=True,
            capture_output=True, text=True).stdout)['actual-size']
    assert actual(base) >= 4 * MIB
    assert snapshot.allocated(str(top), 'qcow2') == actual(top) + actual(base)


@pytest.mark.parametrize('paused', [True, False])
def test_abort_resumes_only_a_guest_the_snapshot_paused(dom, paused):
    dom.suspend()
    snapshot.abort(dom, 'vda', paused=paused)
    assert dom.state()[0] == (libvirt.VIR_DOMAIN_RUNNING if paused
                              else libvirt.VIR_DOMAIN_PAUSED)
