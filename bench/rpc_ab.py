"""Benchmark: two checkouts' RPC servers, cast throughput, alternating.

Not a test. For changes to the cast path: bursts of ``--casts`` keyed casts
(as ``rpc.py`` sends them) are served by the agent's ``RPCServer`` of this
checkout and of ``--other`` (a checkout of the repository; its own
``compute_agent`` is imported, this one's interpreter runs it), each burst
in a fresh process, the two taking turns for ``--rounds`` rounds, and
optionally ``rpc.py``'s raw kombu responder beside them (``--floor``).
Prints the rate of every burst, the medians and the median of the
per-round ratios: on a loaded host the load moves whole rounds, less so
the difference within one.

    .venv/bin/python bench/rpc_ab.py --other /path/to/checkout
        [--casts 5000] [--rounds 6] [--prefetch N] [--floor]

``--prefetch``: override ``[rpc] prefetch_count`` in both (default: the
option's default, the agent as deployed).
"""

import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args):
    """One burst, in a process importing ``args.checkout``'s code."""
    # That checkout's bench/rpc.py, which puts its checkout first on
    # sys.path.
    sys.path.insert(0, os.path.join(os.getcwd(), 'bench'))
    import multiprocessing
    import threading

    import rpc
    conf_of = rpc._our_conf

    def _our_conf(topic, host):
        conf = conf_of(topic, host)
        if args.prefetch:
            conf.set_override('prefetch_count', args.prefetch, group='rpc')
        else:   # the option's default, as deployed
            conf.clear_override('prefetch_count', group='rpc')
        return conf
    rpc._our_conf = _our_conf
    mine, theirs = multiprocessing.Pipe()
    t = threading.Thread(target=rpc.serve, args=(
        args.server, 'bench-ab-%d' % os.getpid(), 'h-%d' % os.getpid(),
        args.casts, theirs), daemon=True)
    t.start()
    rate = mine.recv()
    mine.send('stop')
    mine.recv()
    print(rate)


def burst(checkout, server, args):
    env = dict(os.environ, PYTHONPATH=checkout)
    cmd = [sys.executable, os.path.abspath(__file__), '--child', server,
           '--casts', str(args.casts), '--prefetch', str(args.prefetch or 0)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True,
                         text=True, cwd=checkout).stdout.split()
    return float(out[-1]) if out and out[-1] != 'None' else float('nan')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--other', help='the other checkout')
    parser.add_argument('--casts', type=int, default=5000)
    parser.add_argument('--rounds', type=int, default=6)
    parser.add_argument('--prefetch', type=int, default=0)
    parser.add_argument('--floor', action='store_true',
                        help="also rpc.py's raw kombu responder each round")
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(argparse.Namespace(server=args.child, casts=args.casts,
                                        prefetch=args.prefetch))
    runs = [('this', HERE, 'ours'), ('other', os.path.abspath(args.other),
                                     'ours')]
    if args.floor:
        runs.append(('floor', HERE, 'floor'))
    rates = {name: [] for name, _, _ in runs}
    for r in range(args.rounds):
        k = r % len(runs)
        for name, checkout, server in runs[k:] + runs[:k]:
            rates[name].append(burst(checkout, server, args))
        print('round %d: %s' % (r + 1, '  '.join(
            '%s %.0f' % (n, v[-1]) for n, v in rates.items())), flush=True)
    for name, v in rates.items():
        print('%-6s median %8.0f casts/s   %s' % (
            name, statistics.median(v), ' '.join('%.0f' % x for x in v)))
    ratios = [a / b for a, b in zip(rates['this'], rates['other'])]
    print('this/other per round: %s  median %.3fx' % (
        ' '.join('%.2f' % x for x in ratios), statistics.median(ratios)))
    if args.floor:
        for name in ('this', 'other'):
            rr = [a / b for a, b in zip(rates[name], rates['floor'])]
            print('%s/floor median of rounds %.2fx' % (
                name, statistics.median(rr)))


if __name__ == '__main__':
    sys.exit(main())
