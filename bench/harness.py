"""What the benchmarks that drive a real agent share: the percentile they
print, the run that always tears its agent down, and the error of a run
that failed (not a missed target)."""

import contextlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests' / 'functional'))


class Failed(Exception):
    """The run failed: no numbers (exit status 2), not a missed target."""


def pct(values, p):
    """Nearest-rank percentile (p95 of 10 samples is the largest)."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-p * len(s) // 100) - 1))]


@contextlib.contextmanager
def agent_run(name, env, keep_logs=False):
    """Yield a list of closers. A failure is printed with the agent's log
    tail and swallowed (the caller's next line returns status 2: a failed
    run, not a missed target); closers and the agent's teardown run always."""
    closers = []
    try:
        yield closers
    except Exception as e:      # noqa: BLE001 - a failed run, not a miss
        print('bench/%s: run failed: %s' % (name, e), file=sys.stderr)
        print(env.log_tail(), file=sys.stderr)
    finally:
        for close in closers:
            close()
        if keep_logs:
            os.environ['CA_E2E_KEEP_LOGS'] = str(REPO / 'bench-logs')
        env.teardown()
