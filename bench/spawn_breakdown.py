"""bench/spawn.py --breakdown: wall-clock timers around the steps of the
agent's spawn path, and the tables made from them.

Run as a script it is the timed agent: ``compute-agent`` with a wrapper
around each step in TIMED; on exit it writes
``{label: [[start (time.time()), seconds, thread id], ...]}`` as JSON to
$CA_BENCH_TIMINGS, which spawn.py reads for ``breakdown`` and ``timeline``.
"""

import functools
import json
import os
import statistics
import sys
import threading
import time

# Steps of the agent's spawn path timed by --breakdown: (module, attribute
# path, label). Wall clock; the calls of one spawn nest (driver.spawn holds
# _create_files holds disks.inspect_base ...).
TIMED = [
    ('compute_agent.manager', 'Manager.validate', 'validate: schema + plan'),
    ('compute_agent.virt.planner', 'Planner.spawn',
     '  plan (VIF checks, builder, RelaxNG)'),
    ('compute_agent.virt.builder', 'build', '    builder'),
    ('compute_agent.virt.schema', 'validate_domain', '    RelaxNG validation'),
    ('compute_agent.manager', 'Manager.do_spawn', 'manager.do_spawn'),
    ('compute_agent.manager', 'Manager._set', '  record + report (x2)'),
    ('compute_agent.journal', 'Journal.save_instance',
     '    journal: record + report (fsync)'),
    ('compute_agent.virt.driver', 'LibvirtDriver.spawn', '  driver.spawn'),
    ('compute_agent.virt.planfiles', 'PlanFiles._create_files',
     '    files'),
    ('compute_agent.images.cache', 'ImageCache.fetch',
     '      image cache lookups'),
    ('compute_agent.virt.disks', 'inspect_base', '      qemu-img info'),
    ('compute_agent.virt.disks', 'start_overlay',
     '      overlay: qemu-img started'),
    ('compute_agent.virt.disks', 'Pending.wait',
     '      overlay: qemu-img waited for'),
    ('compute_agent.virt.disks', 'link_or_copy', '      kernel/ramdisk link'),
    ('compute_agent.virt.configdrive', 'build_config_drive',
     '      config drive'),
    # In a thread of its own, while the files are made (virt/overlap.py).
    ('libvirt', 'virConnect.defineXML', '    libvirt defineXML (overlapped)'),
    ('compute_agent.virt.driver', 'LibvirtDriver._boot', '    VIF plug + start'),
    ('compute_agent.virt.driver', 'LibvirtDriver._start', '    start'),
    ('libvirt', 'virDomain.create', '      libvirt create'),
    ('compute_agent.virt.guest', 'wait_running', '      wait RUNNING'),
    ('compute_agent.virt.driver', 'LibvirtDriver.get_power_state',
     '  power state'),
    ('compute_agent.virt.driver', 'LibvirtDriver.get_power_state_and_vnc',
     '  power state + VNC port'),
]


def _label(path):
    return next(label for _m, p, label in TIMED if p == path)


def _timed_agent():
    """The agent with wall-clock timers around TIMED (see the module doc)."""
    import atexit
    import importlib

    out = os.environ['CA_BENCH_TIMINGS']
    calls = {}

    def wrap(owner, attr, label):
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*a, **k):
            t, w = time.perf_counter(), time.time()
            try:
                return fn(*a, **k)
            finally:
                calls.setdefault(label, []).append(
                    (w, time.perf_counter() - t, threading.get_ident()))
        setattr(owner, attr, timed)

    for module, path, label in TIMED:
        owner = importlib.import_module(module)
        *parents, attr = path.split('.')
        for p in parents:
            owner = getattr(owner, p)
        wrap(owner, attr, label)

    def dump():
        with open(out, 'w') as f:
            json.dump(calls, f)
    atexit.register(dump)
    from compute_agent.cmd import agent
    return agent.main(sys.argv[1:])


def breakdown(calls, window, n, agent_t, floor_t):
    """Per-spawn wall time of each TIMED step of the spawns in ``window``
    (the sequential ones): steps below do_spawn count only inside a
    do_spawn call, validation only of spawn requests (with a dry run)."""
    def inside(label, spans):
        return [(w, d) for w, d, _tid in calls.get(label, ())
                if any(a <= w <= b for a, b in spans)]
    seq = [(window[0], window[1])]
    spawns = [(w, w + d) for w, d in inside('manager.do_spawn', seq)]
    dry = inside(_label('Planner.spawn'), seq)
    validations = [(w, w + d) for w, d in inside(_label('Manager.validate'), seq)
                   if any(w <= x <= w + d for x, _ in dry)]
    print('where the agent\'s time goes, per sequential spawn (n=%d; '
          'indented rows are part of the row above them):' % n)
    print('  %-36s %7s %10s %10s' % ('step', 'calls', 'p50 call', 'per spawn'))
    for _module, _path, label in TIMED:
        if label == _label('Manager.validate'):
            d = [b - a for a, b in validations]
        elif label == 'manager.do_spawn':
            d = [b - a for a, b in spawns]
        elif label == _label('Planner.spawn'):
            d = [x for _, x in dry]
        elif label in (_label('build'), _label('validate_domain')):
            d = [x for _, x in inside(label, [(w, w + x) for w, x in dry])]
        else:
            d = [x for _, x in inside(label, spawns)]
        if d:
            print('  %-36s %7.1f %8.1fms %8.1fms' % (
                label, len(d) / n, statistics.median(d) * 1000,
                sum(d) / n * 1000))
    if spawns:
        do50 = statistics.median(b - a for a, b in spawns)
        print('  %-36s %7s %10s %8.1fms' % (
            'cast->active p50 - do_spawn p50', '', '',
            (statistics.median(agent_t) - do50) * 1000))
        print('    (broker in, validation, queueing, report out)')
        print('  %-36s %7s %10s %8.1fms' % ('floor p50 (for comparison)',
                                            '', '',
                                            statistics.median(floor_t) * 1000))


def timeline(calls, window):
    """One line per spawn of an agent burst: when (ms after the first
    cast) each step started and ended, matched by worker thread."""
    t0, t1 = window
    steps = [_label(p) for p in (
        'PlanFiles._create_files', 'virConnect.defineXML',
        'virDomain.create', 'LibvirtDriver.get_power_state')]
    define = _label('virConnect.defineXML')
    spawns = sorted((w, w + d, tid) for w, d, tid in
                    calls.get('manager.do_spawn', ()) if t0 <= w <= t1 + 1)
    print('agent burst timeline, ms after the first cast '
          '(start-end of each step; per spawn, by end):')
    print('  %-11s %-11s %-11s %-11s %-11s %s' % (
        'do_spawn', 'files', 'define', 'create', 'power', 'end'))
    rows = []
    for a, b, tid in spawns:
        cells = ['%4.0f' % ((a - t0) * 1000)]
        for label in steps:
            # defineXML runs in a thread of its own: matched by time only
            m = [(w, d) for w, d, t in calls.get(label, ())
                 if (t == tid or label == define) and a <= w <= b]
            cells.append('%4.0f-%-5.0f' % ((m[0][0] - t0) * 1000,
                                           (m[0][0] + m[0][1] - t0) * 1000)
                         if m else '%-11s' % '-')
        rows.append((b, cells))
    for b, cells in sorted(rows):
        print('  %-11s %s %5.0f' % (cells[0], ' '.join(cells[1:]),
                                    (b - t0) * 1000))


if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    sys.exit(_timed_agent())
