"""Benchmark: snapshot of a running guest through the agent vs by hand.

Not a test. Needs root, RabbitMQ on localhost:5672, libvirtd and the test
guest (built on demand into $CA_TEST_CACHE/guest). It starts a real
``compute-agent`` (tests/functional/agent_fixture.AgentEnv) whose image
store holds ``bench-root``, a 256 MiB qcow2 image full of data, spawns one
test guest on it (its root disk a qcow2 overlay on the cached image) and
waits until it is READY; then, alternating the order each round so that
load from elsewhere hits both alike, --n rounds of:

  agent   ``snapshot`` call (``disk_format`` qcow2) with the default
          ``[libvirt] snapshot_pause_max_mb``: the disk is under it, so the
          agent pauses the guest, ``qemu-img convert``s, resumes, then
          hashes (sha256) and stores the copy in the file:// store
  hand    the baseline: pause the guest, ``qemu-img convert -O qcow2`` of
          its root disk (the overlay and its base) to a file, resume
  hand+sha256  the same, then the sha256 of the file: the floor of any
          agent that keeps the contract (it must report the checksum)

then (unless --no-blockcopy) the agent is restarted with
``snapshot_pause_max_mb = 0`` and --n more rounds compare its block copy
(never paused) with more by-hand rounds.

Before each run the root disk and its base are dropped from the host's page
cache (posix_fadvise DONTNEED on those files only), so both sides read them
from disk, as for a guest whose disk uses ``cache=none``. A thread polls the
domain's state every 2 ms and adds up the time it is seen paused: the
guest's pause. Prints p50/p95 of the wall time and the pause of each side,
agent p50 / hand p50 (target <= 1.2, PASS/MISS) and agent p50 / floor p50,
so a miss shows as the agent's or the hash's.

    .venv/bin/python bench/snapshot.py [--n 5] [--keep-logs] [--no-blockcopy]

Exit status: 0 target met, 1 target missed, 2 the run failed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from harness import agent_run, pct

TARGET = 1.2
SIDES = ('hand', 'hand+sha256', 'agent', 'agent blockcopy')
LABELS = {'hand': 'by hand: pause+convert+resume',
          'hand+sha256': 'by hand + sha256 (the floor)',
          'agent': 'agent (default bound)',
          'agent blockcopy': 'agent, bound 0 (block copy)'}
DISK_MB = 256
POLL = 0.002


def evict(*paths):
    """Drop these files' pages from the page cache (no other file's)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class PauseMeter:
    """Adds up the time a domain is seen paused (polled every 2 ms)."""

    def __init__(self, dom):
        import libvirt
        self._paused_state = libvirt.VIR_DOMAIN_PAUSED
        self._dom = dom
        self._stop = threading.Event()
        self.paused = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        last = time.monotonic()
        while not self._stop.is_set():
            state = self._dom.state()[0]
            now = time.monotonic()
            if state == self._paused_state:
                self.paused += now - last
            last = now
            time.sleep(POLL)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.paused


def make_image(path, disk_mb):
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(path), f'{disk_mb}M'],
                   check=True, timeout=60)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', f'write -P 0x5a 0 {disk_mb}M', str(path)],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    os.chmod(path, 0o644)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=5)
    ap.add_argument('--keep-logs', action='store_true')
    ap.add_argument('--disk-mb', type=int, default=DISK_MB,
                    help='root disk size, all of it data (the must-show: 256; '
                         'the default pause bound: 1024)')
    ap.add_argument('--no-blockcopy', action='store_true',
                    help='skip the second phase (agent with snapshot_pause_max_mb = 0)')
    args = ap.parse_args()

    from agent_fixture import AgentEnv, open_libvirt
    from guest_fixture import build_test_guest

    from compute_agent.images import store
    from compute_agent.virt import snapshot as snapshot_mod

    env = AgentEnv(build_test_guest(), label='bench-snap')
    env.write_config(DEFAULT={'debug': 'false'})
    with agent_run('snapshot.py', env, args.keep_logs) as closers:
        make_image(env.images / 'bench-root', args.disk_mb)
        env.start()
        inst = env.make_instance('bench', image_ref='bench-root')
        inst, _ = env.spawn(instance=inst, image_meta={'id': 'bench-root',
                                                       'disk_format': 'qcow2'})
        env.wait_console(inst['uuid'], 'READY', timeout=120)
        lv = open_libvirt()
        closers.append(lv.close)
        dom = lv.lookupByUUIDString(inst['uuid'])
        root, _fmt = snapshot_mod.root_disk(dom, 'vda')
        base = subprocess.run(['qemu-img', 'info', '-U', '--output=json', root],
                              check=True, capture_output=True, text=True)
        backing = json.loads(base.stdout).get('full-backing-filename')
        chain = [root] + ([backing] if backing else [])
        times = {side: [] for side in SIDES}
        pauses = {side: [] for side in SIDES}
        phases = [('agent', {})]
        if not args.no_blockcopy:
            phases.append(('agent blockcopy', {'snapshot_pause_max_mb': 0}))
        for phase, (agent_side, libvirt_opts) in enumerate(phases):
            if libvirt_opts:      # the guest runs on; only the agent restarts
                env.stop()
                env.write_config(DEFAULT={'debug': 'false'}, libvirt=libvirt_opts)
                env.start()
            for i in range(args.n):
                order = (agent_side, 'hand') if i % 2 == 0 else ('hand', agent_side)
                for side in order:
                    evict(*chain)
                    meter = PauseMeter(dom)
                    if side == agent_side:
                        image_id = f'bench-snap-{phase}-{i}'
                        t0 = time.monotonic()
                        env.call('snapshot', instance_uuid=inst['uuid'],
                                 image_id=image_id, disk_format='qcow2')
                        times[side].append(time.monotonic() - t0)
                        out = env.images / image_id
                    else:
                        out = env.root / f'hand-{phase}-{i}.qcow2'
                        t0 = time.monotonic()
                        dom.suspend()
                        subprocess.run(['qemu-img', 'convert', '-U', '-O', 'qcow2', root,
                                        str(out)], check=True, timeout=600)
                        dom.resume()
                        times[side].append(time.monotonic() - t0)
                        store.sha256_of(out)
                        times['hand+sha256'].append(time.monotonic() - t0)
                    pause = meter.stop()
                    pauses[side].append(pause)
                    if side == 'hand':
                        pauses['hand+sha256'].append(pause)
                    out.unlink()
        print(f'snapshot of a running guest, {args.disk_mb} MiB root disk full of data, '
              f'{args.n} rounds per phase (page cache of the disk dropped before each)')
        print('%-32s %8s %8s %12s %12s' % ('', 'p50 s', 'p95 s', 'pause p50 s',
                                           'pause max s'))
        for side in SIDES:
            if not times[side]:
                continue
            print('%-32s %8.3f %8.3f %12.3f %12.3f' % (
                LABELS[side], statistics.median(times[side]), pct(times[side], 95),
                statistics.median(pauses[side]), max(pauses[side])))
        hand = statistics.median(times['hand'])
        floor = statistics.median(times['hand+sha256'])
        agent = statistics.median(times['agent'])
        ratio = agent / hand
        verdict = 'PASS' if ratio <= TARGET else 'MISS'
        print('ratio agent / by-hand copy p50:           %.3f (target <= %.2f) %s' % (
            ratio, TARGET, verdict))
        print('ratio agent / by-hand copy + sha256 p50:  %.3f (the floor with the '
              'contract\'s checksum)' % (agent / floor))
        print('ratio by-hand + sha256 / by-hand p50:     %.3f (what the hash alone costs)'
              % (floor / hand))
        if times['agent blockcopy']:
            blk = statistics.median(times['agent blockcopy'])
            print('ratio agent block copy / by-hand p50:     %.3f (bound 0: never paused)'
                  % (blk / hand))
            print('ratio agent block copy / floor p50:       %.3f' % (blk / floor))
        return 0 if verdict == 'PASS' else 1
    return 2


if __name__ == '__main__':
    sys.exit(main())
