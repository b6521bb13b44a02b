"""Benchmark: spawn latency with VIF filters vs the same spawn without them.

Not a test. Needs what bench/spawn.py needs (root, RabbitMQ, libvirtd, the
test guest); it reuses its agent setup. One guest with one Linux bridge VIF
(a fresh bridge, removed at the end), spawned through the real agent, in
three kinds that alternate so load from elsewhere hits all alike:

  none       filter {"anti_spoofing": false}: the baseline (the agent still
             defines the VIF's nwfilter, empty, and libvirt instantiates it)
  spoof      the default: anti-spoofing (clean-traffic, ebtables)
  rules      anti-spoofing plus 3 security rules (iptables, conntrack)

Time: cast -> ``spawn.end`` (active) report; each guest destroyed after
(not timed). Prints p50/p95 of each and the ratios spoof/none, rules/none.

  agent part  the agent's own filter work per spawn, in this process:
              Firewall.prepare (prerequisite checks, nwfilter XML,
              nwfilterDefineXML) + teardown, for a "rules" VIF; printed as
              a share of what filters add to a spawn (rules p50 - none p50):
              the rest is libvirt instantiating the filter at guest start.

    .venv/bin/python bench/filters.py [--n 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spawn as spawn_bench  # noqa: E402
from harness import pct  # noqa: E402

RULES = [{'direction': 'ingress', 'ethertype': 'IPv4', 'protocol': 'tcp',
          'port_range_min': 22, 'port_range_max': 22,
          'remote_ip_prefix': '10.0.0.0/8'},
         {'direction': 'ingress', 'ethertype': 'IPv4', 'protocol': 'icmp'},
         {'direction': 'egress', 'ethertype': 'IPv4', 'protocol': 'udp',
          'port_range_min': 53, 'port_range_max': 53}]
KINDS = {'none': {'anti_spoofing': False}, 'spoof': {'anti_spoofing': True},
         'rules': {'anti_spoofing': True, 'rules': RULES}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=5,
                        help='spawns of each kind (default 5)')
    args = parser.parse_args()
    bench = spawn_bench.Bench(argparse.Namespace(
        n=args.n, concurrent=1, bursts=1, agent_debug=False, keep_logs=False,
        breakdown=False))
    bridge = 'cabf' + uuid.uuid4().hex[:6]
    times = {k: [] for k in KINDS}
    try:
        bench.setup()
        for i in range(args.n):
            for kind, flt in KINDS.items():
                inst, meta = bench.request('%s-%d' % (kind, i))
                vif = {'id': str(uuid.uuid4()), 'address': 'fa:16:3e:00:%02x:%02x'
                       % (i, len(times[kind]) + 16 * list(KINDS).index(kind)),
                       'type': 'bridge', 'devname': 'tapbf' + uuid.uuid4().hex[:6],
                       'network': {'bridge': bridge, 'mtu': 1500, 'subnets': [
                           {'cidr': '10.77.0.0/24',
                            'ips': [{'address': '10.77.0.%d' % (10 + i)}]}]},
                       'filter': flt}
                bench.events.pop(inst['uuid'], None)
                t0 = time.perf_counter()
                bench.client.spawn(inst, meta, network_info=[vif], cast=True)
                got = bench.wait_event([inst['uuid']], 'spawn.end', 'active')
                times[kind].append(got[inst['uuid']] - t0)
                bench.destroy_agent([(inst, meta)])
    except spawn_bench.Failed as e:
        spawn_bench.log('FAILED: %s' % e)
        return 2
    finally:
        bench.cleanup()
        subprocess.run(['ip', 'link', 'del', bridge], check=False,
                       stderr=subprocess.DEVNULL)
    agent_part = measure_agent_part(bench_conf(), args.n * 3)
    base = statistics.median(times['none'])
    print('%-8s %8s %8s %8s' % ('kind', 'p50 s', 'p95 s', 'ratio'))
    for kind, values in times.items():
        print('%-8s %8.3f %8.3f %8.2f' % (
            kind, statistics.median(values), pct(values, 95),
            statistics.median(values) / base))
    added = statistics.median(times['rules']) - base
    print('agent part (prepare + teardown) p50 %.3f s = %.0f %% of the %.3f s '
          'filters add' % (agent_part, 100 * agent_part / added if added > 0
                           else float('nan'), added))
    return 0


def bench_conf():
    from oslo_config import cfg

    from compute_agent import conf as agent_conf
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    return conf


def measure_agent_part(conf, n):
    import libvirt

    from compute_agent.netfilter import firewall
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(spawn_bench.LIBVIRT_URI)
    fw = firewall.Firewall(conf, lambda fn: fn(conn))
    values = []
    try:
        for i in range(n):
            vif = {'id': 'bench-' + uuid.uuid4().hex, 'type': 'bridge',
                   'address': 'fa:16:3e:00:01:%02x' % i,
                   'network': {'subnets': [{'cidr': '10.77.0.0/24',
                                            'ips': [{'address': '10.77.0.9'}]}]},
                   'filter': KINDS['rules']}
            t0 = time.perf_counter()
            fw.prepare({}, [vif])
            fw.teardown({}, [vif])
            values.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return statistics.median(values)


if __name__ == '__main__':
    sys.exit(main())
