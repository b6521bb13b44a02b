"""Named pause points for the migration crash tests
(tests/functional/test_e2e_migration_crash.py, and
test_e2e_cold_migration_crash.py for cold migration's ``cold-*`` points).

Off unless the environment names a directory in ``COMPUTE_AGENT_TEST_PAUSE_DIR``
(tests only; no option): then at point NAME the agent writes
``DIR/NAME.reached`` and waits while ``DIR/NAME`` exists. The take-over and
the source's cleanup last milliseconds: no timing lets a test SIGKILL a
process inside them, a pause does.
"""

import logging
import os
import time

ENV = 'COMPUTE_AGENT_TEST_PAUSE_DIR'
LOG = logging.getLogger(__name__)


def pause(name):
    where = os.environ.get(ENV)
    if not where:
        return
    gate = os.path.join(where, name)
    if not os.path.exists(gate):
        return
    LOG.warning('test pause point %s: waiting while %s exists', name, gate)
    with open(gate + '.reached', 'w'):
        pass
    while os.path.exists(gate):
        time.sleep(0.05)
