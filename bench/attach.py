"""Benchmark: hot attach/detach latency through the agent vs by hand.

Not a test. Needs root, RabbitMQ on localhost:5672, libvirtd and the test
guest (built on demand into $CA_TEST_CACHE/guest). It starts a real
``compute-agent`` (tests/functional/agent_fixture.AgentEnv), spawns one
test guest and waits until it is READY; then, alternating so that load from
elsewhere hits both alike, --n rounds of:

  agent attach   ``attach_volume`` call of a local file (null mountpoint) ->
                 the guest prints ``HOTPLUG-DISK ... SERIAL <serial>``
  agent detach   ``detach_volume`` call -> the guest prints ``HOTPLUG-GONE``
  hand attach    ``attachDeviceFlags(LIVE|CONFIG)`` of the same disk XML
                 (builder.volume_disk, same serial) in this process -> the
                 same console line
  hand detach    ``detachDeviceFlags(LIVE|CONFIG)`` -> ``HOTPLUG-GONE``

"Guest-visible" is read from the guest's serial console file (polled every
5 ms); the guest itself looks for new disks every 0.2 s, which both sides
pay alike. Prints p50/p95 and agent p50 / hand p50 (target <= 1.10 each).

    .venv/bin/python bench/attach.py [--n 10] [--keep-logs]

Exit status: 0 both targets met, 1 a target missed, 2 the run failed.
"""

import argparse
import os
import re
import statistics
import sys
import time
import uuid

from harness import agent_run, pct

TARGET = 1.10
POLL = 0.005


class Console:
    """Follows a guest's console log file from the current end."""

    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path)

    def mark(self):
        self.offset = os.path.getsize(self.path)

    def wait(self, pattern, timeout=60):
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            with open(self.path, errors='replace') as f:
                f.seek(self.offset)
                m = rx.search(f.read())
            if m:
                return m
            if time.monotonic() > deadline:
                raise RuntimeError('no %r on the console within %ss' % (pattern, timeout))
            time.sleep(POLL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=10)
    ap.add_argument('--keep-logs', action='store_true')
    args = ap.parse_args()

    import libvirt
    from agent_fixture import AgentEnv, open_libvirt
    from guest_fixture import build_test_guest
    from oslo_config import cfg

    from compute_agent import conf as agent_conf
    from compute_agent.virt import builder

    env = AgentEnv(build_test_guest(), label='bench-attach')
    env.write_config(DEFAULT={'debug': 'false'})
    with agent_run('attach.py', env, args.keep_logs) as closers:
        env.start()
        conf = cfg.ConfigOpts()
        agent_conf.register_all(conf)
        conf([], default_config_files=[str(env.config_file)])
        inst, _ = env.spawn(label='bench')
        env.wait_console(inst['uuid'], 'READY', timeout=120)
        console = Console(env.instance_dir(inst) / 'console.log')
        lv = open_libvirt()
        closers.append(lv.close)
        dom = lv.lookupByUUIDString(inst['uuid'])
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        times = {k: [] for k in ('agent attach', 'agent detach', 'hand attach', 'hand detach')}
        for i in range(args.n):
            path = env.root / ('vol-%d' % i)
            with open(path, 'wb') as f:
                f.write(b'CA-MARKER bench-%d\n' % i)
                f.truncate(1 << 20)
            os.chmod(path, 0o666)
            for side in ('agent', 'hand') if i % 2 == 0 else ('hand', 'agent'):
                volume_id = 'bench-%s-%d-%s' % (side, i, uuid.uuid4().hex[:6])
                info = {'driver_volume_type': 'local', 'data': {'device_path': str(path)}}
                serial = re.escape(volume_id[:20])
                console.mark()
                t0 = time.monotonic()
                if side == 'agent':
                    env.call('attach_volume', instance_uuid=inst['uuid'],
                             volume_id=volume_id, connection_info=info)
                else:
                    bdm = {'mount_device': '/dev/vdb', 'volume_id': volume_id,
                           'connection_info': info}
                    disk = builder.volume_disk(conf, bdm, 'vdb', 'virtio')
                    dom.attachDeviceFlags(disk.to_xml(pretty=False), flags)
                m = console.wait(r'^HOTPLUG-DISK (\S+) SERIAL %s ' % serial)
                times[side + ' attach'].append(time.monotonic() - t0)
                console.mark()
                t0 = time.monotonic()
                if side == 'agent':
                    env.call('detach_volume', instance_uuid=inst['uuid'], volume_id=volume_id)
                else:
                    dom.detachDeviceFlags(disk.to_xml(pretty=False), flags)
                console.wait(r'^HOTPLUG-GONE %s$' % re.escape(m.group(1)))
                times[side + ' detach'].append(time.monotonic() - t0)
                if side == 'hand':      # the device must be gone before the next round
                    while '/dev/vdb' in dom.XMLDesc(0) or "dev='vdb'" in dom.XMLDesc(0):
                        time.sleep(0.01)
        print('%-14s %8s %8s' % ('', 'p50 s', 'p95 s'))
        for name, values in times.items():
            print('%-14s %8.3f %8.3f' % (name, statistics.median(values), pct(values, 95)))
        ok = True
        for op in ('attach', 'detach'):
            ratio = statistics.median(times['agent ' + op]) / statistics.median(times['hand ' + op])
            verdict = 'PASS' if ratio <= TARGET else 'MISS'
            ok &= verdict == 'PASS'
            print('%s ratio agent/hand p50: %.3f (target <= %.2f) %s'
                  % (op, ratio, TARGET, verdict))
        return 0 if ok else 1
    return 2


if __name__ == '__main__':
    sys.exit(main())
