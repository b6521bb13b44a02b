"""bench/spawn.py's targets and its results table."""

import os
import statistics

from harness import pct

TARGET_RATIO = 1.03
TARGET_FSYNCS = 3
TARGET_BURST = 3.0
TARGET_FETCHES = 1


def loadavg():
    with open('/proc/loadavg') as f:
        return ' '.join(f.read().split()[:3])


def report(res, args):
    ms = lambda s: '%.0f ms' % (s * 1000)      # noqa: E731
    a50, a95 = statistics.median(res['agent']), pct(res['agent'], 95)
    f50, f95 = statistics.median(res['floor']), pct(res['floor'], 95)
    ratio = a50 / f50
    burst_ratio = res['burst'] / a50
    start_cpu = statistics.median(res['start_cpu'])
    # No agent can start N guests faster than the host's CPUs can do the
    # libvirtd + QEMU work of N starts (guests booting meanwhile only add).
    bound = args.concurrent * start_cpu / os.cpu_count()
    nb = len(res['bursts'])
    med = ' (median of %d)' % nb if nb > 1 else ''
    rows = [
        ('agent cast->active p50 / p95 (n=%d)' % len(res['agent']),
         '%s / %s' % (ms(a50), ms(a95)), '', ''),
        ('floor by hand p50 / p95 (n=%d)' % len(res['floor']),
         '%s / %s' % (ms(f50), ms(f95)), '', ''),
        ('ratio agent p50 / floor p50', '%.3fx' % ratio,
         '<= %.2fx' % TARGET_RATIO, ratio <= TARGET_RATIO),
        ('  (agent - floor, median of the paired runs)',
         '%+.0f ms' % (statistics.median(
             x - y for x, y in zip(res['agent'], res['floor'])) * 1000),
         '', ''),
        ('  (agent CPU per spawn, own + qemu-img, p50)',
         ms(statistics.median(res['agent_cpu'])), '', ''),
        ('journal fsyncs per spawn (strace)',
         'n/a (no strace)' if res['fsyncs'] is None else str(res['fsyncs']),
         '<= %d' % TARGET_FSYNCS,
         res['fsyncs'] is not None and res['fsyncs'] <= TARGET_FSYNCS),
        ('%d concurrent spawns, wall time%s' % (args.concurrent, med),
         ms(res['burst']), '', ''),
        ('  vs one spawn p50', '%.2fx' % burst_ratio,
         '<= %.0fx' % TARGET_BURST, burst_ratio <= TARGET_BURST),
        ('  (floor: %d at once by hand, wall time%s)' % (args.concurrent,
                                                          med),
         ms(res['floor_burst']), '', ''),
        ('  (floor burst vs floor p50)', '%.2fx' % (res['floor_burst'] / f50),
         '', ''),
        ('  (agent burst vs floor burst)',
         '%.2fx' % (res['burst'] / res['floor_burst']), '', ''),
        ('  (libvirtd + QEMU CPU to start one guest, p50)', ms(start_cpu),
         '', ''),
        ('  (CPU bound: %d x that / %d CPUs, vs one spawn p50)' % (
            args.concurrent, os.cpu_count()),
         '%s = %.2fx' % (ms(bound), bound / a50), '', ''),
        ('%d concurrent spawns of an uncached image: '
         'fetches' % args.concurrent, str(res['fetches']),
         '== %d' % TARGET_FETCHES, res['fetches'] == TARGET_FETCHES),
        ('  (their wall time)', ms(res['uncached_burst']), '', ''),
    ]
    w = max(len(r[0]) for r in rows)
    print('%-*s  %15s  %9s  %s' % (w, 'measure', 'value', 'target', ''))
    print('-' * (w + 34))
    for name, value, target, ok in rows:
        verdict = '' if ok == '' else ('PASS' if ok else 'MISS')
        print('%-*s  %15s  %9s  %s' % (w, name, value, target, verdict))
    print()
    print('agent samples (ms): %s' % ' '.join(
        '%.0f' % (t * 1000) for t in res['agent']))
    print('floor samples (ms): %s' % ' '.join(
        '%.0f' % (t * 1000) for t in res['floor']))
    for i, each in enumerate(res['bursts']):
        print('agent burst %d, each spawn.end after (ms): %s' % (
            i + 1, ' '.join('%.0f' % (t * 1000) for t in each)))
    for i, each in enumerate(res['floor_bursts']):
        print('floor burst %d, each RUNNING after (ms):   %s' % (
            i + 1, ' '.join('%.0f' % (t * 1000) for t in each)))
    print('_base files of the uncached image: %s' % (
        ', '.join(res['base_files']) or 'none'))
    print('load average at the end: %s (%d CPUs)' % (loadavg(),
                                                     os.cpu_count()))
    for note in res['notes']:
        print('NOTE: ' + note)
    return all(ok for *_, ok in rows if ok != '')
