"""Broker connections: transport_url parsing, TLS, failover, reconnect policy.

oslo.messaging's ``transport_url`` syntax is kept (several comma-separated
``user:pass@host:port`` entries = a cluster, tried in turn, round-robin).
Each host gets its own kombu Connection so TLS can check each host's own
name; kombu's shared ``alternates`` cannot.
"""

import dataclasses
import logging
import ssl
import threading
import urllib.parse

import amqp
import kombu
import tenacity

from compute_agent import lazy_import
from compute_agent.conf import rabbit as rabbit_conf

# kombu.serialization (loaded with a connection's transport) registers yaml
# and msgpack serializers by importing both packages when installed: ~0.9 MB
# of the agent's memory (bench/scale.py) for codecs it never uses. Bodies are
# JSON that the agent encodes and decodes itself (rpc/envelope.py, channels
# with auto_decode off, every publish with a str body and its content type),
# and kombu accepts only JSON from the broker unless told otherwise; a yaml or
# msgpack body is refused by the agent's own decoder as before.
with lazy_import.not_installed('yaml', 'msgpack'):
    import kombu.serialization  # noqa: F401

LOG = logging.getLogger(__name__)

_TLS_SCHEMES = {'amqps', 'rabbits'}
_SCHEMES = {'rabbit', 'amqp', 'kombu', 'pyamqp'} | _TLS_SCHEMES
_TRUE = {'1', 'true', 'yes', 'on'}
# [rpc] ssl_version (oslo.messaging's names) -> the one TLS version allowed
_TLS_PINS = {'tlsv1': ssl.TLSVersion.TLSv1, 'tlsv1_1': ssl.TLSVersion.TLSv1_1,
             'tlsv1_2': ssl.TLSVersion.TLSv1_2,
             'tlsv1_3': ssl.TLSVersion.TLSv1_3}


class TransportURLError(ValueError):
    pass


@dataclasses.dataclass
class BrokerHost:
    hostname: str
    port: int
    userid: str | None = None
    password: str | None = None


@dataclasses.dataclass
class TransportURL:
    hosts: list
    virtual_host: str = '/'
    ssl: bool = False


def parse_url(url):
    """Parse an oslo.messaging transport URL; user, password and vhost are
    url-decoded."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise TransportURLError('unsupported transport %r' % parts.scheme)
    query = urllib.parse.parse_qs(parts.query)
    use_ssl = scheme in _TLS_SCHEMES or any(
        v.lower() in _TRUE for v in query.get('ssl', []))
    default_port = 5671 if scheme in _TLS_SCHEMES else 5672
    hosts = [_parse_host(h, default_port)
             for h in parts.netloc.split(',') if h]
    if not hosts:
        raise TransportURLError('no broker host in transport_url')
    vhost = urllib.parse.unquote(parts.path[1:]) if parts.path else ''
    return TransportURL(hosts=hosts, virtual_host=vhost or '/', ssl=use_ssl)


def _parse_host(netloc, default_port):
    userid = password = None
    if '@' in netloc:
        creds, netloc = netloc.rsplit('@', 1)
        userid, _, password = creds.partition(':')
        userid = urllib.parse.unquote(userid)
        password = urllib.parse.unquote(password) if _ else None
    if netloc.startswith('['):
        host, _, rest = netloc[1:].partition(']')
        port = rest[1:] if rest.startswith(':') else ''
    else:
        host, _, port = netloc.partition(':')
    try:
        port = int(port) if port else default_port
    except ValueError:
        raise TransportURLError('bad port in %r' % netloc) from None
    return BrokerHost(hostname=host or 'localhost', port=port,
                      userid=userid, password=password)


def ssl_options(conf, host, use_ssl):
    """kombu's ``ssl`` dict (an SSLContext there is silently ignored)."""
    if not (use_ssl or conf.rpc.ssl):
        return False
    opts = {'cert_reqs': ssl.CERT_REQUIRED, 'server_hostname': host}
    if conf.rpc.ssl_ca_file:
        opts['ca_certs'] = conf.rpc.ssl_ca_file
    if conf.rpc.ssl_cert_file:
        opts['certfile'] = conf.rpc.ssl_cert_file
    if conf.rpc.ssl_key_file:
        opts['keyfile'] = conf.rpc.ssl_key_file
    pin = _TLS_PINS.get((conf.rpc.ssl_version or '').lower())
    if pin is not None:
        opts['tls_minimum_version'] = opts['tls_maximum_version'] = pin
    return opts


class Broker:
    """The broker cluster of one transport URL; hands out connections."""

    def __init__(self, conf, url=None, heartbeat=None):
        self.conf = conf
        self.url = parse_url(url or rabbit_conf.transport_url(conf))
        self.heartbeat = conf.rpc.heartbeat if heartbeat is None else heartbeat
        self._next = 0
        self._lock = threading.Lock()

    def connection(self, host):
        return kombu.Connection(
            hostname=host.hostname, port=host.port,
            userid=host.userid or 'guest',
            password=host.password if host.password is not None else 'guest',
            virtual_host=self.url.virtual_host, transport='pyamqp',
            ssl=ssl_options(self.conf, host.hostname, self.url.ssl),
            heartbeat=self.heartbeat, connect_timeout=5)

    def connect_once(self):
        """Try every host once, round-robin from the last one; return a
        connected kombu Connection or raise the last error."""
        with self._lock:
            start = self._next
        hosts = self.url.hosts
        error = None
        for i in range(len(hosts)):
            idx = (start + i) % len(hosts)
            host = hosts[idx]
            conn = self.connection(host)
            try:
                conn.connect()
            except Exception as e:  # noqa: BLE001 - any failure: next host
                error = e
                LOG.warning('Cannot connect to broker %s:%s: %s',
                            host.hostname, host.port, e)
                close_quietly(conn)
                continue
            with self._lock:
                self._next = (idx + 1) % len(hosts)
            LOG.info('Connected to broker %s:%s', host.hostname, host.port)
            return conn
        with self._lock:
            self._next = (start + 1) % len(hosts)
        raise error

    def connect(self, stop_event=None):
        """connect_once under the [rpc] reconnect policy."""
        return reconnect_policy(self.conf, stop_event)(self.connect_once)


class Stopped(Exception):
    """Reconnecting was abandoned because the caller is stopping."""


def reconnect_policy(conf, stop_event=None):
    """tenacity policy from [rpc] reconnect_*: exponential backoff capped at
    reconnect_interval_max, forever or reconnect_max_attempts tries.
    A set ``stop_event`` interrupts the wait and ends retrying."""
    stop_event = stop_event or threading.Event()
    stop = tenacity.stop_any(lambda _: stop_event.is_set())
    if conf.rpc.reconnect_max_attempts:
        stop = tenacity.stop_any(
            stop, tenacity.stop_after_attempt(conf.rpc.reconnect_max_attempts))
    interval = conf.rpc.reconnect_interval
    wait = tenacity.wait_exponential(
        multiplier=interval, min=interval,
        max=max(interval, conf.rpc.reconnect_interval_max))

    def log_retry(state):
        LOG.warning('Broker unreachable (attempt %d), retrying in %.1fs: %s',
                    state.attempt_number, state.next_action.sleep,
                    state.outcome.exception())

    def give_up(state):
        if stop_event.is_set():
            raise Stopped()
        state.outcome.result()  # re-raises the last connection error

    return tenacity.Retrying(
        stop=stop, wait=wait, sleep=stop_event.wait, reraise=True,
        before_sleep=log_retry, retry_error_callback=give_up)


def supervise(broker, stop, serve, ready, disconnected):
    """Connect and ``serve(conn)`` until ``stop`` is set, reconnecting.

    ``serve`` sets ``ready`` once it consumes and returns only when
    stopping; ``disconnected(lost)`` runs after each connection (``lost``:
    it broke, as opposed to the stop). A connection that breaks before
    ``ready`` (a 406 on a declaration, say) backs off like a failed
    connect. Raises when the reconnect policy gives up.
    """
    failures = 0   # consecutive connections that never got to consume
    conf = broker.conf
    while not stop.is_set():
        try:
            conn = broker.connect(stop)
        except Stopped:
            return
        lost = True
        try:
            serve(conn)
            lost = False
        except amqp.exceptions.PreconditionFailed as e:
            failures += 1
            LOG.error('The broker refused a declaration (%s): an existing '
                      'queue or exchange has other flags '
                      '(amqp_durable_queues, rabbit_quorum_queue?)', e)
        except (conn.connection_errors + conn.channel_errors
                + (OSError,)) as e:
            failures = 0 if ready.is_set() else failures + 1
            LOG.warning('Broker connection lost (%s); reconnecting',
                        e or type(e).__name__)
        except Exception:  # noqa: BLE001 - e.g. the journal failed
            # Start over: unacked deliveries go back to the queue.
            failures += 1
            LOG.exception('Serving failed; reconnecting')
        finally:
            ready.clear()
            disconnected(lost)
            close_quietly(conn)
        if failures:
            stop.wait(min(conf.rpc.reconnect_interval_max,
                          conf.rpc.reconnect_interval * 2 ** failures))


def close_quietly(conn):
    """Release a connection that may already be broken."""
    try:
        conn.release()
    except Exception:  # noqa: BLE001
        pass
