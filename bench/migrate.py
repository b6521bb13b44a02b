"""Benchmark: live migration through the agents vs ``virsh migrate`` by hand.

Not a test. Needs root, RabbitMQ on localhost:5672, libvirtd, tini and the
test guest (built on demand into $CA_TEST_CACHE/guest). It starts the two
hosts of tests/functional/second_host.py (a second libvirtd in its own
network and mount namespaces, real agents on both hosts), then --n rounds,
alternating which side goes first, for each mode (block: the destination
agent has its own instances_path; shared: it shares host 1's):

  agent   a test guest (128 MiB, TCG, bridge VIF with anti-spoofing filter)
          spawned on host 1 and READY; timed: the ``live_migrate`` call
          (pre-check, prepare, libvirt's migration, take-over, source
          cleanup) until its reply
  hand    the same guest spawned the same way; untimed, what the agent's
          destination would prepare (block: a copy of the instance
          directory under the destination's instances_path; the VIF's
          nwfilter defined on host 2); timed: the same migration with
          ``virsh migrate --live --p2p --persistent --unsafe
          [--copy-storage-inc --migrate-disks <local disks> --xml <XML with
          the destination's paths>] DOM qemu+tcp://<host 2>/system
          --migrateuri tcp://<host 2>``

The agents run with production intervals (reports and power syncs every
10 s, no debug log). Downtime is libvirt's own measure (``downtime`` of the completed migration
job, read on the destination). Prints p50 of each, and agent p50 / hand p50
for total time and downtime (targets <= 1.2 each).

    .venv/bin/python bench/migrate.py [--n 5] [--modes block,shared]

Exit status: 0 every target met, 1 a target missed, 2 the run failed.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests' / 'functional'))

TARGET = 1.2


def downtime_ms(lv2, uuid):
    import libvirt
    dom = lv2.lookupByUUIDString(uuid)
    stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return stats.get('downtime')


def make_vif(env, bridge):
    import secrets
    return {'id': 'port-' + secrets.token_hex(4),
            'address': 'fa:16:3e:%02x:%02x:%02x' % tuple(secrets.token_bytes(3)),
            'type': 'bridge', 'devname': env.fresh_link('tapbm'),
            'network': {'id': 'net-bench', 'bridge': bridge, 'label': 'bench',
                        'mtu': 1500, 'subnets': []},
            'details': {}}


def spawn_ready(hosts, label):
    a1 = hosts.agent1
    vif = make_vif(a1, hosts.bridge)
    inst, rec = a1.spawn(label=label, network_info=[vif])
    assert rec['vm_state'] == 'active', rec
    a1.wait_console(inst['uuid'], 'READY', timeout=120)
    return inst, vif


def agent_round(hosts, dest, block, label):
    inst, _ = spawn_ready(hosts, label)
    uuid = inst['uuid']
    dest.instances[uuid] = inst
    t0 = time.monotonic()
    out = hosts.agent1.call('live_migrate', instance_uuid=uuid,
                            dest_host=dest.host, block_migration=block)
    took = time.monotonic() - t0
    assert out['host'] == dest.host, out
    lv2 = hosts.second.open()
    try:
        down = downtime_ms(lv2, uuid)
    finally:
        lv2.close()
    dest.destroy(inst)
    return took, down


def hand_round(hosts, dest, block, label):
    from agent_fixture import open_libvirt

    from compute_agent.netfilter import nwfilter
    from compute_agent.virt import migration
    a1 = hosts.agent1
    inst, vif = spawn_ready(hosts, label)
    uuid = inst['uuid']
    src_dir = str(a1.instance_dir(inst))
    lv, lv2 = open_libvirt(), hosts.second.open()
    tmp = tempfile.mkdtemp(prefix='bench-mig-')
    try:
        dom = lv.lookupByUUIDString(uuid)
        name = nwfilter.filter_name(vif)
        lv2.nwfilterDefineXML(lv.nwfilterLookupByName(name).XMLDesc(0))
        cmd = ['virsh', '-q', '-c', 'qemu:///system', 'migrate', '--live',
               '--p2p', '--persistent', '--unsafe']
        if block:
            dest_dir = str(dest.instance_dir(inst))
            # Contents only: libvirt keeps its own ownership records in xattrs.
            shutil.copytree(src_dir, dest_dir, copy_function=shutil.copyfile)
            live = dom.XMLDesc(migration.MIGRATABLE_XML)
            xml = os.path.join(tmp, 'dest.xml')
            with open(xml, 'w') as f:
                f.write(migration.retarget_xml(live, src_dir, dest_dir))
            cmd += ['--copy-storage-inc', '--migrate-disks',
                    ','.join(migration.writable_local_disks(live, src_dir)),
                    '--xml', xml]
        cmd += [inst['name'], hosts.second.libvirt_uri,
                '--migrateuri', 'tcp://%s' % hosts.second.ns_ip]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, timeout=300)
        took = time.monotonic() - t0
        down = downtime_ms(lv2, uuid)
        # Put things back for the agents' cleanup: no domain on host 2.
        dom2 = lv2.lookupByUUIDString(uuid)
        dom2.destroy()
        dom2.undefine()
        lv2.nwfilterLookupByName(name).undefine()
    finally:
        lv.close()
        lv2.close()
        shutil.rmtree(tmp, ignore_errors=True)
    a1.destroy(inst)
    if block:
        shutil.rmtree(dest.instance_dir(inst), ignore_errors=True)
    return took, down


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=5)
    ap.add_argument('--modes', default='block,shared')
    args = ap.parse_args()

    from guest_fixture import build_test_guest
    from second_host import run_two_hosts

    gen = run_two_hosts(build_test_guest(), 'bench')
    hosts = next(gen)
    ok = True
    try:
        # The agents as in production: reports and power syncs every 10 s
        # (the tests' 2 s would poll libvirt during the switch-over).
        for env in (hosts.agent1, hosts.agent2, hosts.agent2_shared):
            env.stop()
            env.write_config(DEFAULT={'report_interval': 10, 'debug': 'false',
                                      'sync_power_state_interval': 10})
            env.start()
        rows = []
        for mode in args.modes.split(','):
            block = mode == 'block'
            dest = hosts.agent2 if block else hosts.agent2_shared
            res = {'agent': [], 'hand': []}
            for i in range(args.n):
                order = ('agent', 'hand') if i % 2 == 0 else ('hand', 'agent')
                for side in order:
                    fn = agent_round if side == 'agent' else hand_round
                    res[side].append(fn(hosts, dest, block, f'{side[0]}{mode[0]}{i}'))
            rows.append((mode, res))
        print('%-7s %-6s %10s %10s %12s' % ('mode', 'side', 'total p50', 'total p95',
                                           'downtime p50'))
        for mode, res in rows:
            for side in ('agent', 'hand'):
                totals = sorted(t for t, _ in res[side])
                downs = [d for _, d in res[side] if d is not None]
                print('%-7s %-6s %9.3fs %9.3fs %10s' % (
                    mode, side, statistics.median(totals), totals[-1],
                    '%d ms' % statistics.median(downs) if downs else 'n/a'))
        for mode, res in rows:      # every sample, to judge the noise
            for side in ('agent', 'hand'):
                print('%-7s %-6s samples: %s' % (mode, side, ', '.join(
                    '%.2fs/%sms' % (t, d) for t, d in res[side])))
        for mode, res in rows:
            for what, idx, unit in (('total', 0, 's'), ('downtime', 1, 'ms')):
                a = [r[idx] for r in res['agent'] if r[idx] is not None]
                h = [r[idx] for r in res['hand'] if r[idx] is not None]
                if not a or not h:
                    print('%s %s: not measured' % (mode, what))
                    ok = False
                    continue
                ratio = statistics.median(a) / statistics.median(h)
                verdict = 'PASS' if ratio <= TARGET else 'MISS'
                ok &= verdict == 'PASS'
                print('%s %s agent/hand p50: %.3f (%.3g vs %.3g %s; target <= %.1f) %s'
                      % (mode, what, ratio, statistics.median(a), statistics.median(h),
                         unit, TARGET, verdict))
        return 0 if ok else 1
    except Exception as e:      # noqa: BLE001 - a failed run, not a miss
        import traceback
        traceback.print_exc()
        print('bench/migrate.py: run failed: %s' % e, file=sys.stderr)
        print(hosts.agent1.log_tail(), file=sys.stderr)
        return 2
    finally:
        try:
            next(gen)
        except StopIteration:
            pass


if __name__ == '__main__':
    sys.exit(main())
