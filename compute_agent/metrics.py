"""Prometheus metrics ([metrics] enabled): what the agent did and how fast.

Counters and histograms are always kept (they are cheap); the HTTP endpoint
is only served when enabled. A private registry keeps tests independent.
"""

import re

import prometheus_client as prom

# Label values that come from requests (method names) are kept only when
# short and plain; anything else is "other", so a sender can neither grow
# the metrics by long names nor put odd text in the exposition.
_LABEL_VALUE = re.compile(r'[A-Za-z0-9_.:-]{1,64}\Z')


def bounded_label(value):
    """``value`` when it is a short plain name, else ``'other'``."""
    return value if isinstance(value, str) and _LABEL_VALUE.match(value) \
        else 'other'


class Metrics:
    def __init__(self):
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.received = prom.Counter(
            'compute_agent_messages_received', 'Requests received, by method',
            ['method'], registry=r)
        self.acked = prom.Counter(
            'compute_agent_messages_acked', 'Requests acknowledged, by method',
            ['method'], registry=r)
        self.rejected = prom.Counter(
            'compute_agent_messages_rejected',
            'Requests rejected to the dead-letter queue, by method',
            ['method'], registry=r)
        self.latency = prom.Histogram(
            'compute_agent_operation_seconds',
            'Time to carry out a request, by method and outcome',
            ['method', 'outcome'], registry=r,
            buckets=(.005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.reconnects = prom.Counter(
            'compute_agent_reconnects', 'Reconnects, by component (broker, libvirt)',
            ['component'], registry=r)
        self.instances = prom.Gauge(
            'compute_agent_instances', 'Instances by vm_state', ['vm_state'],
            registry=r)
        self._server = None

    def count_instances(self, records):
        counts = {}
        for record in records:
            counts[record.get('vm_state')] = counts.get(record.get('vm_state'), 0) + 1
        self.instances.clear()
        for vm_state, n in counts.items():
            self.instances.labels(vm_state=str(vm_state)).set(n)

    def serve(self, address, port):
        """Start the HTTP endpoint in a daemon thread; returns the port."""
        server, _thread = prom.start_http_server(port, addr=address,
                                                 registry=self.registry)
        self._server = server
        return server.server_address[1]

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def render(self):
        return prom.generate_latest(self.registry).decode()


METRICS = Metrics()
