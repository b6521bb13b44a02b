"""Benchmark: what a hostile message costs the consume thread to judge.

Not a test. For each class of message from issue 12, the work the consume
thread does before a message is queued or refused (envelope decode, limit
walk, argument validation), in this process, no broker: median time over
--repeat runs and the peak of Python allocations (tracemalloc, one run),
with the limits of [rpc] (defaults) and without them (``limits=None``:
decode and validation without the limits, but with validation's error cap
and the catch of a nesting too deep to decode, which the agent had neither
of before). The
baseline is a plain valid ``ping`` cast measured in the same run; the ratio
column is against it.

    .venv/bin/python bench/hostile.py [--repeat 5]
"""

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from compute_agent import validation  # noqa: E402
from compute_agent.rpc import envelope  # noqa: E402
from compute_agent.rpc import limits as limits_mod  # noqa: E402


def body(method, args=None, **fields):
    payload = {'method': method, 'args': args or {},
               '_unique_id': uuid.uuid4().hex}
    payload.update(fields)
    return json.dumps({'oslo.version': '2.0',
                       'oslo.message': json.dumps(payload)}).encode()


def spawn(n_vifs):
    return body('spawn', {
        'instance': {'uuid': str(uuid.uuid4()), 'name': 'vm',
                     'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 0}},
        'image_meta': {'id': 'img'},
        'network_info': [{'id': 'p%d' % i, 'address': 'bad', 'type': 'bridge'}
                         for i in range(n_vifs)]})


def cases():
    deep = '[' * 10000 + ']' * 10000
    return [
        ('ping (baseline)', body('ping')),
        ('JSON 10,000 deep', json.dumps({
            'oslo.version': '2.0',
            'oslo.message': '{"method": "ping", "args": {"a": %s}}' % deep
        }).encode()),
        ('lone surrogate in method', body('ping\ud800')),
        ('32k-letter method name', body('a' * 32768)),
        ('32k-letter argument name', body('ping', {'a' * 32768: 1})),
        ('1 MB method name', body('m' * 1024 * 1024)),
        ('spawn, 40,000 bad VIFs (3 MB)', spawn(40000)),
        ('spawn, 200,000 bad VIFs (12 MB)', spawn(200000)),
    ]


def judge(raw, limits):
    """The consume thread's verdict work; returns a short outcome."""
    try:
        request = envelope.parse_request(envelope.loads(raw, limits), limits)
    except envelope.DecodeError:
        return 'dead-lettered'
    except RecursionError:
        return 'RecursionError'
    if request.problem is not None:
        return 'invalid (limit)'
    try:
        validation.validate(request.method, request.args)
    except RecursionError:
        return 'RecursionError'
    except Exception:  # noqa: BLE001
        return 'invalid'
    return 'valid'


def measure(raw, limits, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        outcome = judge(raw, limits)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    judge(raw, limits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak, outcome


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeat', type=int, default=5)
    opts = parser.parse_args()
    limits = limits_mod.Limits()
    rows = []
    for name, raw in cases():
        rows.append((name, len(raw), measure(raw, limits, opts.repeat),
                     measure(raw, None, opts.repeat)))
    base = rows[0][2][0]
    print('%-34s %10s | %-16s %9s %7s %9s | %-16s %9s %9s' % (
        'message', 'bytes', 'limited: verdict', 'ms', 'x ping', 'peak MB',
        'unlimited', 'ms', 'peak MB'))
    for name, size, (t, peak, out), (t0, peak0, out0) in rows:
        print('%-34s %10d | %-16s %9.2f %7.0f %9.1f | %-16s %9.2f %9.1f' % (
            name, size, out, t * 1e3, t / base, peak / 2 ** 20, out0,
            t0 * 1e3, peak0 / 2 ** 20))


if __name__ == '__main__':
    main()
