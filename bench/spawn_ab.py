"""Two agents' spawn latency against each other and the floor, in one run.

Not a test. A development aid for changes to the spawn path: on a shared
host a whole ``spawn.py`` run moves by 5-10 % with the load from elsewhere,
more than the change being judged. This starts one real agent from this
checkout and one from another (``--other``, a checkout with its own
``.venv``, e.g. ``git worktree add /tmp/base <commit>`` + ``pip install
-e``), each set up exactly as ``spawn.py`` sets up its agent, and times
``--n`` rounds of three spawns, in an order shuffled per round: this
agent, the other agent, and the floor (``spawn.py``'s by-hand spawn). Each
round's three samples see the same load, so the paired differences are what
to read: it prints p50 of each, each agent's ratio to the floor (as
``spawn.py`` computes it), and the median of this - other per round with a
bootstrap 90 % interval.

    .venv/bin/python bench/spawn_ab.py --other /path/to/checkout [--n 40]

Needs what ``spawn.py`` needs (root, RabbitMQ, libvirtd, the test guest).
Exit status: 0 done, 2 the run failed, 130 interrupted.
"""

import argparse
import os
import random
import signal
import statistics
import sys

import spawn
import spawn_report


def bootstrap(diffs, rounds=2000, seed=1):
    """90 % interval of the median of ``diffs`` (percentile bootstrap)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(diffs, k=len(diffs)))
                  for _ in range(rounds))
    return meds[int(0.05 * rounds)], meds[int(0.95 * rounds) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--other', required=True,
                        help='a checkout of the agent with its own .venv')
    parser.add_argument('--n', type=int, default=40,
                        help='rounds of (this, other, floor) (default 40)')
    args = parser.parse_args()
    other_agent = os.path.join(os.path.abspath(args.other), '.venv', 'bin',
                               'compute-agent')
    if not os.access(other_agent, os.X_OK):
        parser.error('no %s' % other_agent)
    # spawn.Bench reads only these of its arguments
    bargs = argparse.Namespace(concurrent=1, agent_debug=False,
                               breakdown=False, keep_logs=False)
    benches = {}

    def on_term(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    samples = {'this': [], 'other': [], 'floor': []}
    try:
        for which, agent in (('this', spawn.AGENT), ('other', other_agent)):
            spawn.AGENT = agent         # read by Bench.setup
            benches[which] = b = spawn.Bench(bargs)
            b.setup()
            warm = [b.request('warm')]
            b.spawn_agent(warm)
            b.destroy_agent(warm)
        benches['this'].floor_once('warmfloor')
        rng = random.Random()
        for i in range(args.n):
            order = ['this', 'other', 'floor']
            rng.shuffle(order)
            for which in order:
                if which == 'floor':
                    samples['floor'].append(
                        benches['this'].floor_once('f%d' % i))
                    continue
                b = benches[which]
                req = [b.request('%s%d' % (which[0], i))]
                samples[which].append(b.spawn_agent(req)[req[0][0]['uuid']])
                b.destroy_agent(req)
            spawn.log('round %d/%d: this %.0f, other %.0f, floor %.0f ms' % (
                i + 1, args.n, *(samples[k][-1] * 1000
                                 for k in ('this', 'other', 'floor'))))
    except KeyboardInterrupt:
        spawn.log('interrupted; cleaning up')
        return 130
    except spawn.Failed as e:
        spawn.log('FAILED: %s' % e)
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for b in benches.values():
            b.cleanup()
    med = {k: statistics.median(v) for k, v in samples.items()}
    print('p50 (ms), n=%d: this %.1f, other %.1f, floor %.1f' % (
        args.n, med['this'] * 1000, med['other'] * 1000, med['floor'] * 1000))
    print('ratio p50 / floor p50: this %.3fx, other %.3fx (target <= %.2fx)'
          % (med['this'] / med['floor'], med['other'] / med['floor'],
             spawn_report.TARGET_RATIO))
    for a, b in (('this', 'floor'), ('other', 'floor'), ('this', 'other')):
        d = [(x - y) * 1000 for x, y in zip(samples[a], samples[b])]
        lo, hi = bootstrap(d)
        wins = sum(1 for x in d if x < 0)
        print('%s - %s per round: median %+.1f ms (90%% %+.1f .. %+.1f), '
              '%s faster in %d of %d' % (a, b, statistics.median(d), lo, hi,
                                         a, wins, len(d)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
