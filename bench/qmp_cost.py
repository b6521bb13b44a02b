"""Benchmark: what a domain start costs libvirtd and QEMU, and how much of
it is QEMU answering libvirt's QMP commands. Not a test.

Why it exists: bench/spawn.py's burst target (10 concurrent spawns <= 3x
one spawn) is bounded by the CPU libvirtd and QEMU spend per start on a
2-CPU host. This shows where that CPU goes, with baselines from the same
run:

  libvirt    --starts transient starts (createXML, paused) of a minimal
             domain (type qemu, no disks), each destroyed: wall time and
             the CPU libvirtd and the domain's QEMU spent until createXML
             returned.
  QMP        QEMU started by hand with the same machine and CPU (-S, a QMP
             socket, no libvirt): wall time to its QMP greeting, then the CPU per
             command of --commands ``qom-get`` of the vCPU's boolean
             properties (what libvirt 9 reads after every start, one
             command per CPU feature flag) and, as the baseline, of
             ``query-status``.
  share      bool properties x CPU per qom-get, against libvirt's per-start
             CPU.

QEMU 7.2's QMP monitor reads its socket one byte per main-loop iteration
(strace of its "IO mon_iothread": poll, an eventfd read, four eventfd writes
and a 1-byte recvmsg per byte), so a command's cost grows with its length;
the two commands give the CPU per request byte.

    .venv/bin/python bench/qmp_cost.py [--starts 10] [--commands 2000]

Needs root and libvirtd (qemu:///system); nothing else. Exits 0, or
non-zero with a message naming what failed.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from procstat import cpu_s
from procstat import libvirtd_pids

QEMU = '/usr/bin/qemu-system-x86_64'
MACHINE = ['-machine', 'pc', '-accel', 'tcg', '-cpu', 'qemu64', '-m', '64']
CPU_PATH = '/machine/unattached/device[0]'   # the first vCPU, as libvirt asks
TICK = os.sysconf('SC_CLK_TCK')


def libvirt_starts(n):
    """[(wall s, libvirtd CPU s, QEMU CPU s)] of ``n`` paused starts."""
    import libvirt
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open('qemu:///system')
    lvd = libvirtd_pids()
    if not lvd:
        raise SystemExit('bench/qmp_cost: libvirtd is not running '
                         '(tools/start-services.sh)')
    out = []
    for i in range(n + 1):            # the first one warms caches, not kept
        name = 'qmp-cost-%s' % uuid.uuid4().hex[:8]
        xml = ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64"
               "</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type>"
               "</os><features><acpi/></features></domain>" % name)
        lv0, t0 = cpu_s(lvd), time.perf_counter()
        dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
        try:
            wall, lv = time.perf_counter() - t0, cpu_s(lvd) - lv0
            with open('/run/libvirt/qemu/%s.pid' % name) as f:
                qemu = cpu_s([int(f.read())])
        finally:
            dom.destroy()           # transient: nothing else is left behind
        if i:
            out.append((wall, lv, qemu))
    conn.close()
    return out


class Qmp:
    """QEMU with a QMP socket, started by hand."""

    def __init__(self, workdir):
        path = os.path.join(workdir, 'qmp.sock')
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [QEMU, '-S', '-nodefaults', '-no-user-config', '-display', 'none',
             '-qmp', 'unix:%s,server=on,wait=off' % path] + MACHINE,
            stdin=subprocess.DEVNULL)
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit('bench/qmp_cost: QEMU did not start') from None
                time.sleep(0.001)
        self.f = self.sock.makefile('rw')
        self.f.readline()                   # the greeting: QEMU is up
        self.startup = time.perf_counter() - t0
        self.cmd('qmp_capabilities')

    def cmd(self, name, **args):
        self.f.write(self._request(name, args))
        self.f.flush()
        while True:                         # skip events
            reply = json.loads(self.f.readline())
            if 'error' in reply:
                raise SystemExit('bench/qmp_cost: %s: %s' % (name, reply))
            if 'return' in reply:
                return reply['return']

    def per_command(self, n, name, **args):
        """(wall s, QEMU CPU s, request bytes) per command over ``n``."""
        c0, t0 = cpu_s([self.proc.pid]), time.perf_counter()
        for _ in range(n):
            self.cmd(name, **args)
        return ((time.perf_counter() - t0) / n,
                (cpu_s([self.proc.pid]) - c0) / n,
                len(self._request(name, args)))

    @staticmethod
    def _request(name, args):
        msg = {'execute': name}
        if args:
            msg['arguments'] = args
        return json.dumps(msg) + '\n'

    def close(self):
        self.cmd('quit')
        self.proc.wait(10)
        self.sock.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--starts', type=int, default=10)
    p.add_argument('--commands', type=int, default=2000)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('bench/qmp_cost: run as root (qemu:///system)')

    starts = libvirt_starts(a.starts)
    with tempfile.TemporaryDirectory(prefix='qmp-cost-') as work:
        q = Qmp(work)
        try:
            props = [x['name'] for x in q.cmd('qom-list', path=CPU_PATH)
                     if x['type'] == 'bool']
            qom = q.per_command(a.commands, 'qom-get', path=CPU_PATH,
                                property=props[0])
            status = q.per_command(a.commands, 'query-status')
        finally:
            q.close()

    ms = 1000.0
    wall = statistics.median(s[0] for s in starts)
    lv = statistics.mean(s[1] for s in starts)
    qemu = statistics.mean(s[2] for s in starts)
    features = len(props) * qom[1]
    rows = [
        ('libvirt start (paused), wall p50, n=%d' % a.starts,
         '%.0f ms' % (wall * ms)),
        ('  libvirtd CPU per start (mean)', '%.0f ms' % (lv * ms)),
        ('  QEMU CPU per start (mean)', '%.0f ms' % (qemu * ms)),
        ('QEMU alone: wall time to its QMP greeting',
         '%.0f ms' % (q.startup * ms)),
        ('QMP query-status (%d bytes), QEMU CPU per command' % status[2],
         '%.0f us' % (status[1] * 1e6)),
        ('QMP qom-get (%d bytes), QEMU CPU / wall per command' % qom[2],
         '%.0f / %.0f us' % (qom[1] * 1e6, qom[0] * 1e6)),
        ('  ratio qom-get / query-status: CPU, request bytes',
         '%.2fx, %.2fx' % (qom[1] / status[1] if status[1] else float('nan'),
                           qom[2] / status[2])),
        ('  QEMU CPU per request byte (from the two)',
         '%.1f us' % ((qom[1] - status[1]) / (qom[2] - status[2]) * 1e6)),
        ('vCPU bool properties (one qom-get each per start)', '%d' % len(props)),
        ('  their QEMU CPU per start', '%.0f ms' % (features * ms)),
        ('  share of libvirtd + QEMU CPU per start',
         '%.0f %%' % (100 * features / (lv + qemu) if lv + qemu else 0)),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print('%-*s  %12s' % (width, label, value))
    print('(CPU from /proc in %d ms ticks: per-start rows are means over '
          '--starts, per-command rows over --commands)' % (1000 // TICK))
    return 0


if __name__ == '__main__':
    sys.exit(main())
