"""What cold migration's disk channel costs (virt/coldmigration.py).

The same qcow2 disk (an overlay with data on a backing image) is copied
three ways in one run, each ``--n`` times, best time kept:

* baseline: ``qemu-img convert`` file to file on this host;
* plain NBD: a ``qemu-nbd`` export read by ``qemu-img convert`` over
  loopback without TLS (what the channel would be without its key);
* the agent's channel: ``ColdMigration.export_disks`` + ``_fetch`` (TLS
  with a one-time pre-shared key, one-shot export).

    .venv/bin/python bench/cold_copy.py [--mib 256] [--n 3]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from compute_agent.virt import coldmigration  # noqa: E402

ADDRESS = '127.0.0.1'


class _Driver(coldmigration.ColdMigration):
    def __init__(self, inst_dir):
        self.inst_dir = inst_dir

    def _dir(self, instance):
        return self.inst_dir


def _disk(work, mib):
    base = os.path.join(work, 'base.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', base,
                    '%dM' % (mib * 2)], check=True)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x42 0 %dM' % (
        mib // 2), base], check=True, capture_output=True)
    inst = os.path.join(work, 'inst')
    os.mkdir(inst)
    disk = os.path.join(inst, 'disk')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base,
                    '-F', 'qcow2', disk], check=True)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x43 %dM %dM' % (
        mib // 2, mib // 2), disk], check=True, capture_output=True)
    return inst, disk


def _best(n, fn):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mib', type=int, default=256)
    ap.add_argument('--n', type=int, default=3)
    opts = ap.parse_args()
    work = tempfile.mkdtemp(prefix='ca-bench-coldcopy-')
    try:
        inst, disk = _disk(work, opts.mib)
        out = os.path.join(work, 'out')

        def local():
            subprocess.run(['qemu-img', 'convert', '-q', '-O', 'qcow2', disk,
                            out], check=True)

        def plain():
            with socket.socket() as s:
                s.bind((ADDRESS, 0))
                port = s.getsockname()[1]
            proc = subprocess.Popen(['qemu-nbd', '-r', '-t', '-f', 'qcow2',
                                     '--bind', ADDRESS, '--port', str(port),
                                     '-x', 'disk', disk])
            try:
                coldmigration._wait_listening('bench', ADDRESS, port,
                                              types.SimpleNamespace(
                                                  poll=proc.poll, stderr=None))
                subprocess.run(['qemu-img', 'convert', '-q', '-O', 'qcow2',
                                'nbd://%s:%d/disk' % (ADDRESS, port), out],
                               check=True)
            finally:
                proc.terminate()
                proc.wait()

        drv = _Driver(inst)
        plan = types.SimpleNamespace(
            instance={'uuid': 'bench', 'name': 'bench'},
            files=[types.SimpleNamespace(kind='root', name='disk', fmt='qcow2')])

        def channel():
            with drv.export_disks(plan, ADDRESS) as (key, exports):
                keydir = coldmigration._psk_dir(key)
                try:
                    if os.path.exists(out):
                        os.unlink(out)
                    drv._fetch(ADDRESS, exports[0]['port'], keydir, 'qcow2', out)
                finally:
                    shutil.rmtree(keydir)

        base = _best(opts.n, local)
        nbd = _best(opts.n, plain)
        agent = _best(opts.n, channel)
        print('disk: %d MiB of data (half in the backing image)' % opts.mib)
        print('qemu-img convert file->file (baseline): %.3f s' % base)
        print('plain NBD over loopback:                %.3f s  (%.2fx)' % (
            nbd, nbd / base))
        print('agent channel (NBD + TLS-PSK):          %.3f s  (%.2fx; %.2fx '
              'of plain NBD)' % (agent, agent / base, agent / nbd))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
