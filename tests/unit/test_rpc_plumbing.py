"""Transport URLs, reconnect policy, workers, settlement and the publisher
(with fake channels: no broker needed)."""

import collections
import ssl
import threading
import time

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent.journal import Journal
from compute_agent.rpc import jobs
from compute_agent.rpc import publisher as pub
from compute_agent.rpc import transport
from compute_agent.rpc.workers import KeyedExecutor

try:
    from tests.unit.fake_amqp import Channel
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from fake_amqp import Channel


@pytest.fixture
def conf():
    c = agent_conf.register_all(cfg.ConfigOpts())
    c([], project='test', default_config_files=[])
    return c


# ------------------------------------------------------------- transport

def test_parse_url_cluster_and_decoding():
    url = transport.parse_url(
        'rabbit://us%40er:p%3Ass@h1:5673,other:pw@h2,[::1]:5674/v%2Fhost')
    assert [(h.hostname, h.port, h.userid, h.password) for h in url.hosts] \
        == [('h1', 5673, 'us@er', 'p:ss'), ('h2', 5672, 'other', 'pw'),
            ('::1', 5674, None, None)]
    assert url.virtual_host == 'v/host' and not url.ssl


@pytest.mark.parametrize('url,vhost,port,use_ssl', [
    ('rabbit://localhost', '/', 5672, False),
    ('rabbit://localhost/', '/', 5672, False),
    ('amqps://localhost/prod', 'prod', 5671, True),
    ('rabbit://localhost:1/?ssl=true', '/', 1, True),
])
def test_parse_url_defaults(url, vhost, port, use_ssl):
    parsed = transport.parse_url(url)
    assert (parsed.virtual_host, parsed.hosts[0].port, parsed.ssl) == (
        vhost, port, use_ssl)


@pytest.mark.parametrize('url', ['http://x', 'rabbit://', 'rabbit://h:x/'])
def test_parse_url_errors(url):
    with pytest.raises(transport.TransportURLError):
        transport.parse_url(url)


def test_ssl_options(conf):
    assert transport.ssl_options(conf, 'h', False) is False
    conf.set_override('ssl_ca_file', '/ca.pem', group='rpc')
    conf.set_override('ssl_cert_file', '/c.pem', group='rpc')
    conf.set_override('ssl_key_file', '/k.pem', group='rpc')
    opts = transport.ssl_options(conf, 'broker1', True)
    assert opts == {'cert_reqs': ssl.CERT_REQUIRED, 'server_hostname':
                    'broker1', 'ca_certs': '/ca.pem', 'certfile': '/c.pem',
                    'keyfile': '/k.pem'}


def test_broker_round_robin_and_policy(conf):
    conf.set_override('transport_url', 'rabbit://g:g@127.0.0.1:1,'
                      'g:g@127.0.0.1:2/')
    conf.set_override('reconnect_interval', 0.01, group='rpc')
    conf.set_override('reconnect_max_attempts', 3, group='rpc')
    broker = transport.Broker(conf)
    tried = []
    broker.connection = lambda host: tried.append(host.port) or _Refusing()
    with pytest.raises(ConnectionRefusedError):
        broker.connect()
    assert tried == [1, 2, 2, 1, 1, 2]  # every host per attempt, rotating


def test_policy_stops_on_event(conf):
    conf.set_override('reconnect_interval', 5, group='rpc')
    stop = threading.Event()
    policy = transport.reconnect_policy(conf, stop)
    calls = []

    def attempt():
        calls.append(1)
        stop.set()
        raise OSError('down')

    with pytest.raises(transport.Stopped):
        policy(attempt)
    assert calls == [1]


class _Refusing:
    def connect(self):
        raise ConnectionRefusedError('refused')

    def release(self):
        pass


# --------------------------------------------------------------- workers

def test_keyed_executor_orders_per_key_and_runs_keys_in_parallel():
    ex = KeyedExecutor(4)
    lock = threading.Lock()
    order = collections.defaultdict(list)
    active = collections.Counter()
    peak = collections.Counter()
    total = {'now': 0, 'peak': 0}
    done = threading.Semaphore(0)

    def job(key, i):
        def run():
            with lock:
                active[key] += 1
                total['now'] += 1
                peak[key] = max(peak[key], active[key])
                total['peak'] = max(total['peak'], total['now'])
            time.sleep(0.01)
            with lock:
                order[key].append(i)
                active[key] -= 1
                total['now'] -= 1
            done.release()
        return run

    for i in range(10):
        for key in 'abc':
            ex.submit(key, job(key, i))
    for _ in range(30):
        assert done.acquire(timeout=5)
    assert all(order[k] == list(range(10)) for k in 'abc')
    assert max(peak.values()) == 1 and total['peak'] > 1
    ran = threading.Event()
    ex.submit(None, ran.set)
    assert ran.wait(5)
    ex.shutdown()


def test_pool_threads_start_as_work_needs_them():
    """No worker thread while idle; jobs handed over back to back each get
    a thread of their own (up to the pool size) even while the first
    taker is still between taking its job and starting it."""
    def workers():
        return [t for t in threading.enumerate()
                if t.name.startswith('lazy-')]

    ex = KeyedExecutor(3, fast_workers=1, name='lazy')
    assert workers() == []
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold():
        started.release()
        release.wait(10)

    for _ in range(20):   # the race window is narrow: try it often
        for key in 'abc':
            ex.submit(key, hold)
        for _ in range(3):     # all three run at once, none waits
            assert started.acquire(timeout=5)
        release.set()
        time.sleep(0.01)
        release.clear()
    assert len([t for t in workers() if 'worker' in t.name]) == 3
    ran = threading.Event()
    ex.submit(None, ran.set)
    assert ran.wait(5)
    assert len(workers()) == 4
    ex.shutdown()
    for t in workers():
        t.join(5)
    assert workers() == [] and ex.dead_threads() == 4


# ------------------------------------------------------------ settlement

def test_settlement_acks_in_bulk_below_the_oldest_unsettled():
    ch = Channel()
    s = jobs.Settlement()
    s.attach(ch)
    for tag in range(1, 8):
        s.delivered(tag)
    s.ack([(1, 1), (1, 2), (1, 3), (1, 5), (0, 6)])  # 6: old connection
    assert ch.calls == [('ack', 3, True), ('ack', 5, False)]
    s.hold()
    s.reject(4)
    assert len(ch.calls) == 2          # held while reading
    s.release()
    assert ch.calls[-1] == ('reject', 4, False)
    s.ack([(1, 6), (1, 7)])
    assert ch.calls[-1] == ('ack', 7, True)


# ------------------------------------------------------------- publisher

@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path))
    yield j
    j.close()


def test_publisher_confirms_then_deletes(conf, journal):
    p = pub.Publisher(journal, conf)
    ch = Channel()
    p.attach(ch)
    p.publish(pub.REPORT, 'ex', 'sched', b'r1')
    p.publish(pub.REPORT, 'ex', 'sched', b'r2')
    p.pump()
    assert [c[0] for c in ch.calls] == ['confirm_select', 'publish',
                                        'publish']
    p._on_ack(2, True)
    ids, dropped = p.take_settled()
    assert len(ids) == 2 and p.waiting() == 0 and not dropped
    journal.outbox_delete(ids)
    assert journal.outbox_count() == 0


def test_publisher_survives_disconnect_in_order(conf, journal):
    p = pub.Publisher(journal, conf)
    ch = Channel()
    p.attach(ch)
    for i in range(3):
        p.publish(pub.REPORT, 'ex', 'k', b'%d' % i)
    p.pump()
    p._on_ack(1, False)
    p.detach()                 # 2 and 3 unconfirmed
    again = Channel()
    p.attach(again)
    p.pump()
    sent = [c[4] for c in again.calls if c[0] == 'publish']
    assert len(sent) == 2 and sent == sorted(sent, key=int)
    # A restarted agent finds the unconfirmed ones in the outbox.
    journal.outbox_delete(p.take_settled()[0])
    assert len(pub.Publisher(journal, conf)._pending) == 2


def test_unroutable_reply_is_retried_then_abandoned(conf, journal):
    conf.set_override('reply_timeout', 1, group='rpc')
    p = pub.Publisher(journal, conf)
    ch = Channel()
    p.attach(ch)
    p.publish(pub.REPLY, '', 'reply_gone', b'x')
    p.pump()
    mid = ch.calls[-1][4]
    assert ch.calls[-1][2] is True     # mandatory

    class Msg:
        properties = {'message_id': mid}

    p._on_return(Exception('NO_ROUTE'), '', 'reply_gone', Msg())
    p._on_ack(1, False)
    assert p.next_due() is not None and p.waiting() == 1
    time.sleep(0.3)
    p.pump()
    assert sum(1 for c in ch.calls if c[0] == 'publish') == 2
    time.sleep(0.8)
    p._on_return(Exception('NO_ROUTE'), '', 'reply_gone', Msg())
    p._on_ack(2, False)
    assert p.waiting() == 0
    (gone, reason), = p.take_settled()[1]
    assert reason == 'unroutable' and gone.routing_key == 'reply_gone'


def test_outbox_max_drops_oldest_reports(conf, journal):
    conf.set_override('outbox_max', 10, group='rpc')
    p = pub.Publisher(journal, conf)
    p.publish(pub.REPLY, '', 'q', b'reply')
    for i in range(12):
        p.publish(pub.REPORT, 'ex', 'k', b'%d' % i)
    bodies = [e.body for e in p._pending]
    assert b'reply' in bodies and len(bodies) <= 10
    assert bodies[-1] == b'11'


def test_a_message_the_broker_refuses_alone_is_dropped(conf, journal):
    """The broker closed the publishing channel over a publish: what was in
    flight is sent again one at a time; the one refused alone
    MAX_REFUSALS times is dropped, the others go out."""
    p = pub.Publisher(journal, conf)
    for body in (b'good1', b'poison', b'good2'):
        p.publish(pub.REPORT, 'ex', 'k', body)
    ch = Channel()
    p.attach(ch)
    p.pump()
    assert len([c for c in ch.calls if c[0] == 'publish']) == 3
    p.detach(refused=True)         # all three were in flight: suspects
    for _ in range(pub.MAX_REFUSALS + 2):
        ch = Channel()
        p.attach(ch)
        p.pump()
        sent = [c for c in ch.calls if c[0] == 'publish']
        if not sent:
            break
        assert len(sent) == 1      # a suspect goes alone
        (entry,) = p._inflight.values()
        if entry.body == b'poison':
            p.detach(refused=True)
        else:
            p._on_ack(1, False)
            p.detach()
    confirmed, dropped = p.take_settled()
    assert [(m.body, reason) for m, reason in dropped] == [
        (b'poison', 'refused')]
    assert len(confirmed) == 2 and p.waiting() == 0


def test_connection_loss_is_not_a_refusal(conf, journal):
    p = pub.Publisher(journal, conf)
    p.publish(pub.REPORT, 'ex', 'k', b'r')
    for _ in range(pub.MAX_REFUSALS + 1):
        ch = Channel()
        p.attach(ch)
        p.pump()
        p.detach()                 # the broker went away, nothing refused
    assert p.take_settled() == ([], []) and p.waiting() == 1
