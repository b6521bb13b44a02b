"""compute-agent: the service.

Loads the configuration (/etc/compute-agent/compute-agent.conf and
compute-agent.conf.d/ when no --config-file/--config-dir is given; a bad
value exits 2 naming the option), sets up
logging, reconciles instances, serves RPC until SIGTERM/SIGINT (graceful:
in-flight work finishes, the rest stays queued), reloads on SIGHUP.
"""

import logging
import signal
import sys
import time

from oslo_config import cfg

from compute_agent import conf as ca_conf
from compute_agent import exception
from compute_agent import lazy_import
from compute_agent import log
from compute_agent import memory
from compute_agent.cmd import common
from compute_agent.conf import unknown

LOG = logging.getLogger('compute_agent')
# s between the main loop's looks at the signals it was sent
SIGNAL_POLL = 0.25


def load_config(argv, conf=None):
    # Logging options (--debug, --log-file, --use-json, --use-journal...)
    # are oslo.log's, registered with the others by conf.register_all.
    conf = conf or ca_conf.CONF
    conf(argv, project='compute-agent', prog='compute-agent',
         version=common.version_string('compute-agent'),
         default_config_files=common.default_config_files(),
         default_config_dirs=common.default_config_dirs())
    ca_conf.check(conf)
    return conf


def setup_logging(conf):
    log.setup(conf)


def main(argv=None):
    if argv is None:        # the command itself, not a caller's main([...])
        memory.reexec_tuned()   # see memory.py
        argv = sys.argv[1:]
    memory.limit_arenas()   # before any thread starts: see memory.py
    # Loaded by the first operation that builds or reads XML: see
    # lazy_import.py (an idle agent never needs it).
    lazy_import.defer('lxml.etree')
    try:
        conf = load_config(argv)
    except (exception.ConfigError, cfg.Error, ValueError) as e:
        print('compute-agent: %s' % e, file=sys.stderr)
        return 2
    setup_logging(conf)
    unknown.warn_unknown(conf)
    from compute_agent.service import Service     # after logging is set up
    service = Service(conf)
    signals = []

    def on_signal(signum, _frame):
        # Only an append: a handler runs in the main thread between two of
        # its bytecodes, so taking a lock here (Event.set, logging,
        # oslo.config) deadlocks when the main thread holds that lock at
        # that moment (seen: Event.set while Event.wait held its condition,
        # and the agent never stopped). The main loop does the work.
        signals.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        service.start()
    except Exception:
        LOG.exception('failed to start')
        return 1
    while True:
        time.sleep(SIGNAL_POLL)
        while signals:
            signum = signals.pop(0)
            if signum == signal.SIGHUP:
                LOG.info('SIGHUP: reloading configuration and logging')
                conf.mutate_config_files()
                setup_logging(conf)
                continue
            LOG.info('signal %d: stopping', signum)
            service.stop()
            LOG.info('stopped')
            return 0
        if service.server.error is not None:
            LOG.error('RPC server gave up: %s', service.server.error)
            service.stop(0)
            return 1


if __name__ == '__main__':
    sys.exit(main())
