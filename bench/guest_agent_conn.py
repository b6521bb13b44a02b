"""Benchmark: what a guest-agent command's own libvirt connection costs.
Not a test.

Why it exists: every guest-agent command (virt/guest_agent.py) runs on a
connection of its own (``Connection.dedicated``), opened for the command
and closed after it, so a command a guest agent never answers holds none
of the pooled connections. This prints what that costs per command against
the baseline measured in the same run, the same libvirt call on a pooled
connection (``Connection.call``):

  pooled      ``lookupByUUIDString`` of a missing uuid through ``call``
  dedicated   the same through ``dedicated`` (open, call, close)
  threaded    ``dedicated`` in a thread of its own that the caller waits
              for, as ``GuestAgent._run`` does

    .venv/bin/python bench/guest_agent_conn.py [--n 500] [--uri qemu:///system]

Needs libvirtd at ``--uri`` (root for qemu:///system). Exits 0, or non-zero
with a message naming what failed.
"""

import argparse
import statistics
import sys
import threading
import time

import libvirt
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent.virt import connection

MISSING = '00000000-0000-4000-8000-000000000000'


def _lookup(conn):
    try:
        conn.lookupByUUIDString(MISSING)
    except libvirt.libvirtError:
        pass


def _threaded(conn_obj):
    done = threading.Event()

    def work():
        try:
            conn_obj.dedicated(_lookup)
        finally:
            done.set()
    threading.Thread(target=work, daemon=True).start()
    done.wait(30)


def _time(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out), sorted(out)[int(n * 0.95) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=500)
    ap.add_argument('--uri', default='qemu:///system')
    opts = ap.parse_args()
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    conf.set_override('connection_uri', opts.uri, 'libvirt')
    conf.set_override('virt_type', 'qemu', 'libvirt')
    conn = connection.Connection(conf)
    try:
        conn.get()
    except Exception as e:  # noqa: BLE001
        print('bench: cannot open %s: %s' % (opts.uri, e), file=sys.stderr)
        return 1
    try:
        rows = [('pooled', _time(lambda: conn.call(_lookup), opts.n))]
        rows.append(('dedicated', _time(lambda: conn.dedicated(_lookup), opts.n)))
        rows.append(('threaded', _time(lambda: _threaded(conn), opts.n)))
    finally:
        conn.close()
    base = rows[0][1][0]
    print('%-10s %9s %9s %8s' % ('call', 'p50 ms', 'p95 ms', 'x pooled'))
    for name, (p50, p95) in rows:
        print('%-10s %9.3f %9.3f %8.2f' % (name, p50, p95, p50 / base))
    print('extra per guest-agent command (threaded - pooled, p50): %.3f ms'
          % (rows[2][1][0] - base))
    return 0


if __name__ == '__main__':
    sys.exit(main())
