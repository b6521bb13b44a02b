"""CPU time of processes, from /proc (for the benchmarks)."""

import os
import subprocess


def cpu_s(pids):
    """User + system CPU seconds of ``pids`` (0 for any that are gone)."""
    total = 0
    for pid in pids:
        try:
            with open('/proc/%d/stat' % pid) as f:
                v = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        total += int(v[11]) + int(v[12])
    return total / os.sysconf('SC_CLK_TCK')


def libvirtd_pids():
    out = subprocess.run(['pgrep', '-x', 'libvirtd'], capture_output=True,
                         text=True, check=False).stdout.split()
    return sorted(int(p) for p in out)
