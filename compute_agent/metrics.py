"""Prometheus metrics ([metrics] enabled): what the agent did and how fast.

Served over HTTP only when enabled: ``/metrics`` for Prometheus and
``/healthz`` (200 while the agent's own loops are alive, 503 otherwise; a
JSON body saying the broker and libvirt state). A private registry keeps
tests independent.

The process-wide ``METRICS`` keeps counters, histograms and gauges once
``enable`` ran: the service calls it before anything is counted when
``[metrics] enabled`` (``serve`` and ``render`` call it too). Until then
every metric is a stand-in that counts nothing: with the endpoint off
nobody can read a value, and prometheus_client (with the http/wsgi modules
it imports and the metric objects: ~1.3 MB, bench/scale.py) stays unloaded.
"""

import json
import re
import socket
import threading

# Label values that come from requests (method names) are kept only when
# short and plain; anything else is "other", so a sender can neither grow
# the metrics by long names nor put odd text in the exposition.
_LABEL_VALUE = re.compile(r'[A-Za-z0-9_.:-]{1,64}\Z')


def bounded_label(value):
    """``value`` when it is a short plain name, else ``'other'``."""
    return value if isinstance(value, str) and _LABEL_VALUE.match(value) \
        else 'other'


_CHILDREN = {}            # (metric, labels as given) -> child
_BOUNDED = {}             # (metric, bounded labels) -> child
_LABEL_SETS = {}
_MAX_LABEL_SETS = 100
_MAX_CACHED = 1000


class _Unkept:
    """Every metric before ``Metrics.enable``: takes any label and value,
    keeps nothing."""

    def labels(self, *_labels, **_kwargs):
        return self

    def inc(self, amount=1):
        pass

    def observe(self, amount):
        pass

    def set(self, value):
        pass

    def clear(self):
        pass


_UNKEPT = _Unkept()


def labelled(metric, *labels):
    """``metric.labels(*labels)`` without its cost on the hot path.

    Labels come from requests before validation, so they are bounded in
    size (bounded_label) and past _MAX_LABEL_SETS per metric new
    method names are counted as "other": a sender cannot grow the metrics
    without bound. Labels as given are looked up first (the common case:
    a known method), in a cache that stops growing at _MAX_CACHED.
    """
    if metric is _UNKEPT:
        return metric
    child = _CHILDREN.get((metric, labels))
    if child is None:
        child = _bounded(metric, tuple(bounded_label(label)
                                       for label in labels))
        if len(_CHILDREN) < _MAX_CACHED:
            _CHILDREN[(metric, labels)] = child
    return child


def _bounded(metric, labels):
    child = _BOUNDED.get((metric, labels))
    if child is None:
        if _LABEL_SETS.setdefault(metric, 0) >= _MAX_LABEL_SETS:
            return metric.labels('other', *labels[1:])
        _LABEL_SETS[metric] += 1
        child = _BOUNDED[(metric, labels)] = metric.labels(*labels)
    return child


_NAMES = ('received', 'acked', 'rejected', 'latency', 'dropped', 'reconnects',
          'instances', 'broker_connected', 'libvirt_connected', 'outbox_depth')


class Metrics:
    def __init__(self, kept=True):
        self.registry = None
        for name in _NAMES:
            setattr(self, name, _UNKEPT)
        self._server = None
        self._lock = threading.Lock()
        if kept:
            self.enable()

    @property
    def enabled(self):
        """Whether values are kept (``enable`` ran)."""
        return self.registry is not None

    def enable(self):
        """Keep values from now on (idempotent); call it before the threads
        that count start."""
        with self._lock:
            if self.registry is None:
                self._create()

    def _create(self):
        import prometheus_client as prom
        r = prom.CollectorRegistry()
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
        self.dropped = prom.Counter(
            'compute_agent_messages_dropped',
            'Replies and reports given up as unpublishable, by kind and '
            'reason (unencodable, refused, unroutable, outbox_max)',
            ['kind', 'reason'], registry=r)
        self.reconnects = prom.Counter(
            'compute_agent_reconnects', 'Reconnects, by component (broker, libvirt)',
            ['component'], registry=r)
        self.instances = prom.Gauge(
            'compute_agent_instances', 'Instances by vm_state', ['vm_state'],
            registry=r)
        self.broker_connected = prom.Gauge(
            'compute_agent_broker_connected',
            '1 while the agent consumes on a broker connection', registry=r)
        self.libvirt_connected = prom.Gauge(
            'compute_agent_libvirt_connected',
            '1 while libvirtd answered the last probe', registry=r)
        self.outbox_depth = prom.Gauge(
            'compute_agent_outbox_depth',
            'Messages waiting in the on-disk outbox for the broker', registry=r)
        self.registry = r          # last: ``enabled`` once all exist

    def set_instance_counts(self, counts):
        """The gauge from {vm_state: number of instances}."""
        self.instances.clear()
        for vm_state, n in counts.items():
            self.instances.labels(vm_state=str(vm_state)).set(n)

    def serve(self, address, port, health=None):
        """Start the HTTP endpoint in a daemon thread; returns the port.

        ``health()`` returns the /healthz dict; its ``alive`` key picks the
        status code. Without it /healthz is 404.
        """
        self.enable()
        server = _server_class(address)((address, port), _handler(self, health))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name='metrics-http',
                         daemon=True).start()
        self._server = server
        return server.server_address[1]

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def render(self):
        import prometheus_client as prom
        self.enable()
        return prom.generate_latest(self.registry).decode()


def _server_class(address):
    import http.server
    if ':' not in address:
        return http.server.ThreadingHTTPServer

    class HTTPServer6(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
    return HTTPServer6


def _handler(metrics, health):
    import http.server

    import prometheus_client as prom

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split('?', 1)[0]
            if path == '/metrics':
                self._send(200, prom.CONTENT_TYPE_LATEST,
                           prom.generate_latest(metrics.registry))
            elif path == '/healthz' and health is not None:
                state = health()
                self._send(200 if state.get('alive') else 503,
                           'application/json',
                           json.dumps(state, sort_keys=True).encode() + b'\n')
            else:
                self._send(404, 'text/plain', b'not found\n')

        def _send(self, code, ctype, body):
            self.send_response(code)
            self.send_header('Content-Type', ctype)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass      # scrapes are not worth a log line each
    return Handler


# The agent's: kept once the service enables it (see the module docstring).
METRICS = Metrics(kept=False)
