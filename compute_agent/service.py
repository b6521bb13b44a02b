"""The agent process: wires journal, driver, manager and RPC server together.

Start order matters: records are reconciled with libvirt (``recover``)
before any message is consumed, and systemd hears READY=1 only once the
queues are consumed. Periodic work (host reports, power sync, image cache
cleanup, health probes, the watchdog) runs on ``periodic.Runner``: one
thread per enabled task, never on the consume loop.
"""

import logging

from compute_agent import health as health_mod
from compute_agent import journal as journal_mod
from compute_agent import manager as manager_mod
from compute_agent import memory
from compute_agent import periodic
from compute_agent import systemd
from compute_agent.images import cleanup
from compute_agent.metrics import METRICS
from compute_agent.rpc import notifier as notifier_mod
from compute_agent.rpc import publisher as publisher_mod
from compute_agent.rpc import server as server_mod
from compute_agent.virt import schema

LOG = logging.getLogger(__name__)

# Longest time between health probes (libvirt answering, outbox depth,
# gauges); the watchdog interval or report_interval may make it shorter.
PROBE_INTERVAL = 10.0
# How much more start time to ask systemd for while waiting for the broker.
_START_EXTEND = 30.0


class Service:
    def __init__(self, conf, driver=None):
        from compute_agent.virt import driver as driver_mod
        self.conf = conf
        if conf.metrics.enabled:
            METRICS.enable()      # before anything counts: see metrics.py
        self.journal = journal_mod.Journal(conf.state_path)
        self.publisher = publisher_mod.Publisher(self.journal, conf)
        self.notifier = notifier_mod.Notifier(self.journal, conf)
        self.driver = driver or driver_mod.LibvirtDriver(
            conf, on_power_event=self._on_power_event,
            on_agent_event=self._on_agent_event)
        self.manager = manager_mod.Manager(conf, self.driver, self.journal,
                                           self.notifier)
        self.server = server_mod.RPCServer(conf, self.manager, self.journal,
                                           self.publisher)
        self.sd = systemd.Notifier()
        self.periodic = periodic.Runner()
        self.health = health_mod.Health(
            self.server, self.driver, self.journal, self.periodic, self.sd,
            '%s.%s' % (conf.rpc.topic, conf.host))

    def start(self, ready_timeout=None):
        self.sd.status('reconciling instances with libvirt')
        if self.conf.injected_network_template:
            LOG.info('injected_network_template is set but not used: network '
                     'configuration reaches guests through the config '
                     'drive\'s network_data.json')
        self.manager.recover()
        if self.conf.metrics.enabled:
            port = METRICS.serve(self.conf.metrics.listen_address,
                                 self.conf.metrics.port,
                                 health=self.health.snapshot)
            LOG.info('metrics on http://%s:%d/metrics (and /healthz)',
                     self.conf.metrics.listen_address, port)
        self.sd.status('connecting to the broker (%s)'
                       % self.health.broker_address())
        self.server.start()
        self._add_tasks()
        # The watchdog and probes run while we wait for the broker too.
        self.periodic.start()
        waited = 0.0
        while not self.server.ready.wait(1.0):
            waited += 1.0
            if self.server.error is not None:
                raise RuntimeError('broker given up: %s' % self.server.error)
            if ready_timeout is not None and waited >= ready_timeout:
                raise RuntimeError('queues not consumed within %ss'
                                   % ready_timeout)
            if waited % 10 == 0:    # keep systemd's start job from timing out
                self.sd.extend_timeout(
                    _START_EXTEND, 'waiting for the broker (%s)'
                    % self.health.broker_address())
        self.sd.ready('serving %s.%s' % (self.conf.rpc.topic, self.conf.host))
        LOG.info('serving topic %s as host %s', self.conf.rpc.topic,
                 self.conf.host)

    def _add_tasks(self):
        conf, images = self.conf, self.conf.images
        watchdog = systemd.watchdog_interval()
        add = self.periodic.add
        add('host-state', conf.report_interval, self.manager.host_state)
        add('power-sync', conf.sync_power_state_interval,
            self.manager.sync_power_states)
        add('image-cache', images.image_cache_manager_interval
            if images.remove_unused_base_images else 0,
            self._remove_unused_images)
        add('health-probe', min(i for i in (PROBE_INTERVAL, watchdog,
                                            conf.report_interval) if i),
            self._probe)
        add('watchdog', watchdog, self.health.watchdog)
        # Interrupted migrations (live and cold, reverts too): at start, then
        # until settled.
        add('migration-settle', conf.libvirt.live_migration_settle_interval,
            self.manager.settle_migrations)
        # Guest agents are probed as often as power states are synced.
        add('guest-agent', conf.sync_power_state_interval,
            self.manager.poll_guest_agents, run_immediately=False)

    def _probe(self):
        self.health.probe()
        # Hand back what bursts of work left free in the C heap (no thread
        # of its own: each one costs memory too), with the compiled domain
        # schema once no plan has needed it for a while.
        schema.release_idle()
        memory.trim()

    def _on_power_event(self, uuid, power_state):
        self.manager.on_power_event(uuid, power_state)

    def _on_agent_event(self, uuid, connected, domain_started):
        self.manager.on_guest_agent_event(uuid, connected, domain_started)

    def healthy(self):
        """Loops alive (what the watchdog checks); see health.py."""
        return not self.health.problems()

    def _remove_unused_images(self):
        cleanup.remove_unused(
            self.driver.image_cache,
            self.conf.images.remove_unused_original_minimum_age_seconds)

    def stop(self, graceful_timeout=None):
        """Stop consuming, let in-flight work finish, leave the rest queued."""
        if graceful_timeout is None:
            graceful_timeout = self.conf.graceful_shutdown_timeout
        self.sd.stopping('draining in-flight operations')
        self.health.stopping = True
        self.server.stop(graceful_timeout)
        self.periodic.stop()
        METRICS.stop()
        self.driver.close()
        self.journal.close()

    def wait(self):
        self.server.wait()
