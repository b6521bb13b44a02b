"""The agent process: wires journal, driver, manager and RPC server together.

Start order matters: records are reconciled with libvirt (``recover``)
before any message is consumed, and systemd hears READY=1 only once the
queues are consumed. Periodic work (host reports, power sync, watchdog,
metrics, image cache cleanup) runs on one small thread, never on the
consume loop.
"""

import logging
import threading
import time

from compute_agent import journal as journal_mod
from compute_agent import manager as manager_mod
from compute_agent import systemd
from compute_agent.images import cleanup
from compute_agent.metrics import METRICS
from compute_agent.rpc import notifier as notifier_mod
from compute_agent.rpc import publisher as publisher_mod
from compute_agent.rpc import server as server_mod

LOG = logging.getLogger(__name__)


class Service:
    def __init__(self, conf, driver=None):
        from compute_agent.virt import driver as driver_mod
        self.conf = conf
        self.journal = journal_mod.Journal(conf.state_path)
        self.publisher = publisher_mod.Publisher(self.journal, conf)
        self.notifier = notifier_mod.Notifier(self.publisher, conf)
        self.driver = driver or driver_mod.LibvirtDriver(
            conf, on_power_event=self._on_power_event)
        self.manager = manager_mod.Manager(conf, self.driver, self.journal,
                                           self.notifier)
        self.server = server_mod.RPCServer(conf, self.manager, self.journal,
                                           self.publisher)
        self.sd = systemd.Notifier()
        self._stop = threading.Event()
        self._periodic = None

    def start(self, ready_timeout=None):
        self.sd.status('reconciling instances with libvirt')
        if self.conf.injected_network_template:
            LOG.info('injected_network_template is set but not used: network '
                     'configuration reaches guests through the config '
                     'drive\'s network_data.json')
        self.manager.recover()
        if self.conf.metrics.enabled:
            port = METRICS.serve(self.conf.metrics.listen_address,
                                 self.conf.metrics.port)
            LOG.info('metrics on http://%s:%d/metrics',
                     self.conf.metrics.listen_address, port)
        self.sd.status('connecting to the broker')
        self.server.start()
        if not self.server.ready.wait(ready_timeout):
            raise RuntimeError('queues not consumed within %ss' % ready_timeout)
        self._periodic = threading.Thread(target=self._periodic_loop,
                                          name='periodic', daemon=True)
        self._periodic.start()
        self.sd.ready('serving %s.%s' % (self.conf.rpc.topic, self.conf.host))
        LOG.info('serving topic %s as host %s', self.conf.rpc.topic,
                 self.conf.host)

    def _on_power_event(self, uuid, power_state):
        self.manager.on_power_event(uuid, power_state)

    def healthy(self):
        return self.server.healthy() and self.driver.healthy()

    def _periodic_loop(self):
        """Host reports, power sync, watchdog pings, metrics gauges and
        image cache cleanup."""
        watchdog = systemd.watchdog_interval()
        images = self.conf.images
        tasks = [(self.conf.report_interval, self.manager.host_state),
                 (self.conf.sync_power_state_interval,
                  self.manager.sync_power_states),
                 (self.conf.report_interval, lambda: METRICS.count_instances(
                     self.journal.list_instances())),
                 (images.image_cache_manager_interval
                  if images.remove_unused_base_images else 0,
                  self._remove_unused_images)]
        if watchdog:
            tasks.append((watchdog, self._watchdog))
        due = [time.monotonic()] * len(tasks)
        while not self._stop.is_set():
            now = time.monotonic()
            for i, (interval, task) in enumerate(tasks):
                if interval and now >= due[i]:
                    due[i] = now + interval
                    try:
                        task()
                    except Exception:
                        LOG.exception('periodic task %s failed',
                                      getattr(task, '__name__', task))
            self._stop.wait(max(0.1, min(due) - time.monotonic()))

    def _remove_unused_images(self):
        cleanup.remove_unused(
            self.driver.image_cache,
            self.conf.images.remove_unused_original_minimum_age_seconds)

    def _watchdog(self):
        if self.healthy():
            self.sd.watchdog()
        else:
            self.sd.status('unhealthy: broker or libvirt connection down')

    def stop(self, graceful_timeout=None):
        """Stop consuming, let in-flight work finish, leave the rest queued."""
        if graceful_timeout is None:
            graceful_timeout = self.conf.graceful_shutdown_timeout
        self.sd.stopping('draining in-flight operations')
        self._stop.set()
        self.server.stop(graceful_timeout)
        METRICS.stop()
        self.driver.close()
        self.journal.close()

    def wait(self):
        self.server.wait()
