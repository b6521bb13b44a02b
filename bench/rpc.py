"""Benchmark: the agent's RPC server vs oslo.messaging vs raw kombu.

Not a test. On the local broker, for each of
  ours   compute_agent.rpc.server.RPCServer with a ping dispatcher (journal
         on disk, synchronous=FULL for keyed requests, acks after the outcome
         is recorded),
  oslo   oslo_messaging.get_rpc_server(executor='threading'),
  floor  a raw kombu echo responder (decode, reply, ack; no journal),
  floorq the same responder on queues declared as the agent declares them
         (durable, dead-letter exchange): oslo's client sends persistent
         messages, which RabbitMQ stores in a durable queue, and that
         difference is the broker's, set by the wire contract,
each in its own process (as deployed; one process would make them fight
over one GIL), measure
  cast throughput: --casts casts (with a serialization key over 50
    instances, so ours journals them durably: fsync, group commit) are
    queued before the server starts, then timed from the first one the
    server runs until it has processed them all (ours: run, journaled,
    acked), counted by the server;
  call round trip: a stock oslo RPCClient in this process calls ping
    (p50, mean over --calls); the servers take turns call by call so
    that load from elsewhere on the machine hits them alike. Beside it, the
    CPU each server process (all threads) spent per call meanwhile.
Cast bursts are repeated --rounds times, the servers taking turns (fresh
processes each time), and the median of the per-round ratios counts: on a
busy machine one burst each says little. Prints a table with the ratios
ours/oslo, ours/floor and ours/floorq, and the two targets (call p50
ours/floor <= 1.15x, cast throughput ours/floor >= 1.3x); exits 1 when one
is missed.

    .venv/bin/python bench/rpc.py [--calls 1000] [--casts 5000] [--rounds 3]
"""

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid

import kombu

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

URL = 'rabbit://guest:guest@localhost:5672/'
AMQP_URL = URL.replace('rabbit://', 'amqp://', 1)
EXCHANGE = 'bench-ex'


class Counter:
    def __init__(self):
        self.n = 0
        self.first = None
        self.lock = threading.Lock()

    def hit(self):
        with self.lock:
            self.n += 1
            if self.first is None:
                self.first = time.perf_counter()


class PingDispatcher:
    """Ours: ping is keyless (read-only) and, like the manager's, runs on
    the consume thread; count carries a key."""

    inline_methods = frozenset(('ping',))

    def __init__(self, counter):
        self.counter = counter

    def validate(self, method, args, version):
        return args

    def key(self, method, args):
        return args.get('key')

    def dispatch(self, method, args, context):
        if method == 'count':
            self.counter.hit()
        return {'pong': True}

    def report_invalid(self, *a):
        pass


class OsloEndpoint:
    def __init__(self, counter):
        self.counter = counter

    def ping(self, ctxt):
        return {'pong': True}

    def count(self, ctxt, key=None):
        self.counter.hit()
        return {'pong': True}


def declare_like_oslo(channel, topic, host):
    channel.exchange_declare(EXCHANGE, 'topic', durable=False,
                             auto_delete=False)
    for q in (topic, '%s.%s' % (topic, host)):
        channel.queue_declare(q, durable=False, auto_delete=False)
        channel.queue_bind(q, EXCHANGE, routing_key=q)


# ------------------------------------------------------------ the servers

def _our_conf(topic, host):
    from oslo_config import cfg

    from compute_agent import conf as agent_conf
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='bench', default_config_files=[])
    conf.set_override('transport_url', URL)
    conf.set_override('control_exchange', EXCHANGE)
    conf.set_override('host', host)
    conf.set_override('state_path', tempfile.mkdtemp(prefix='bench-'))
    conf.set_override('topic', topic, group='rpc')
    # prefetch_count as deployed: its default (the raw responder's window
    # below is the same, 200).
    return conf


def ours(topic, host, counter, declare):
    from compute_agent.journal import Journal
    from compute_agent.rpc import server as server_mod
    from compute_agent.rpc import topology
    conf = _our_conf(topic, host)
    with kombu.Connection(AMQP_URL) as c:
        topology.declare(c.channel(), conf)
    declare()
    server = server_mod.RPCServer(conf, PingDispatcher(counter),
                                  Journal(conf.state_path))
    server.start()

    def stop():
        server.stop(5)
        with kombu.Connection(AMQP_URL) as c:
            topology.delete(c.channel(), conf)
        shutil.rmtree(conf.state_path, ignore_errors=True)
    return (lambda: server.stats['completed']), stop


def oslo(topic, host, counter, declare):
    import oslo_messaging
    from oslo_config import cfg
    with kombu.Connection(AMQP_URL) as c:
        declare_like_oslo(c.channel(), topic, host)
    declare()
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=URL)
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=topic, server=host,
                                         exchange=EXCHANGE),
        [OsloEndpoint(counter)], executor='threading')
    server.start()

    def stop():
        server.stop()
        server.wait()
        transport.cleanup()
        _delete_queues(topic, host)
    return (lambda: counter.n), stop


def floor(topic, host, counter, declare, ours_queues=False):
    """Raw kombu: decode, reply on the default exchange, ack.

    ``ours_queues``: consume from queues declared as the agent declares
    them (durable, with a dead-letter exchange) instead of oslo's
    transient ones: the broker's share of the difference (oslo's client
    sends persistent messages, which a durable queue stores)."""
    from compute_agent.rpc import envelope
    from compute_agent.rpc import topology
    stopping = threading.Event()
    conf = _our_conf(topic, host) if ours_queues else None
    with kombu.Connection(AMQP_URL) as c:
        if conf is not None:
            topology.declare(c.channel(), conf)
        else:
            declare_like_oslo(c.channel(), topic, host)
    declare()

    def run():
        with kombu.Connection(AMQP_URL) as conn:
            ex = kombu.Exchange(EXCHANGE, 'topic', durable=False)
            if conf is not None:   # declared above, with our arguments
                queues = [kombu.Queue(n, no_declare=True)
                          for n in (topic, '%s.%s' % (topic, host))]
            else:
                queues = [kombu.Queue(n, ex, routing_key=n, durable=False)
                          for n in (topic, '%s.%s' % (topic, host))]
            producer = kombu.Producer(conn.channel())

            def on_message(message):
                payload = envelope.loads(message.body)
                if payload.get('method') == 'count':
                    counter.hit()
                if payload.get('_reply_q'):
                    producer.publish(
                        envelope.pack(envelope.build_reply(
                            payload['_msg_id'], {'pong': True})),
                        exchange='', routing_key=payload['_reply_q'],
                        serializer='json')
                message.ack()

            with kombu.Consumer(conn.channel(), queues, on_message=on_message,
                                prefetch_count=200):
                while not stopping.is_set():
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop():
        stopping.set()
        thread.join(5)
        if conf is not None:
            with kombu.Connection(AMQP_URL) as c:
                topology.delete(c.channel(), conf)
        else:
            _delete_queues(topic, host)
    return (lambda: counter.n), stop


def floor_ours_queues(topic, host, counter, declare):
    return floor(topic, host, counter, declare, ours_queues=True)


SERVERS = {'ours': ours, 'oslo': oslo, 'floor': floor,
           'floorq': floor_ours_queues}


def _delete_queues(topic, host):
    with kombu.Connection(AMQP_URL) as c:
        ch = c.channel()
        for q in (topic, '%s.%s' % (topic, host)):
            ch.queue_delete(q)


def publish_casts(topic, host, casts):
    from compute_agent.rpc import envelope
    with kombu.Connection(AMQP_URL) as conn:
        ch = conn.channel()
        for i in range(casts):
            body = json.dumps(envelope.pack(envelope.build_request(
                'count', {'key': 'instance-%d' % (i % 50)},
                context={'request_id': 'req-%d' % i}))).encode()
            msg = ch.prepare_message(body, content_type='application/json',
                                     content_encoding='utf-8',
                                     properties={'delivery_mode': 2})
            ch.basic_publish(msg, exchange=EXCHANGE,
                             routing_key='%s.%s' % (topic, host))
        ch.queue_declare('%s.%s' % (topic, host), passive=True)


def serve(name, topic, host, casts, pipe):
    """Child process: preload casts, time them, then serve until told."""
    logging.basicConfig(level=logging.WARNING)
    counter = Counter()
    processed, stop = SERVERS[name](
        topic, host, counter, lambda: publish_casts(topic, host, casts))
    deadline = time.monotonic() + 300
    while processed() < casts and time.monotonic() < deadline:
        time.sleep(0.001)
    done = processed() >= casts
    pipe.send((casts - 1) / (time.perf_counter() - counter.first)
              if done else None)
    while pipe.recv() == 'cpu':   # until told to stop
        pipe.send(time.process_time())
    stop()
    pipe.send('stopped')


# ------------------------------------------------------------- the client

def measure_calls(clients, calls):
    times = {name: [] for name in clients}
    names = list(clients)
    for i in range(calls):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t = time.perf_counter()
            clients[name].call({}, 'ping')
            times[name].append(time.perf_counter() - t)
    return {name: {'p50_ms': statistics.median(t) * 1000,
                   'mean_ms': statistics.mean(t) * 1000}
            for name, t in times.items()}


TARGET_CALL_P50 = 1.15    # ours / floor, at most
TARGET_CASTS = 1.3        # ours / floor throughput, at least


def start_server(ctx, name, casts):
    """A server process with ``casts`` preloaded; (rate, process, pipe,
    topic, host) once it has processed them."""
    suffix = uuid.uuid4().hex[:8]
    topic, host = 'bench-' + suffix, 'h-' + suffix
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(name, topic, host, casts, theirs))
    proc.start()
    rate = mine.recv()
    if rate is None:
        raise SystemExit('%s: casts not processed in time' % name)
    return rate, proc, mine, topic, host


def _cpu(pipe):
    pipe.send('cpu')
    return pipe.recv()


def stop_server(proc, pipe):
    pipe.send('stop')
    pipe.recv()
    proc.join(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--calls', type=int, default=1000)
    parser.add_argument('--casts', type=int, default=5000)
    parser.add_argument('--rounds', type=int, default=3,
                        help='cast bursts per server, the servers taking '
                             'turns (each a fresh process); the median of '
                             'the per-round ratios counts (default 3)')
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import oslo_messaging
    from oslo_config import cfg
    ctx = multiprocessing.get_context('spawn')
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=URL)
    names = list(SERVERS)
    rates = {name: [] for name in names}
    children, clients, results = {}, {}, {}
    for r in range(args.rounds):
        # One at a time, so the bursts do not overlap; rotating the order
        # spreads the machine's load over all of them alike.
        k = r % len(names)
        for name in names[k:] + names[:k]:
            rate, proc, pipe, topic, host = start_server(ctx, name,
                                                         args.casts)
            rates[name].append(rate)
            if r < args.rounds - 1:
                stop_server(proc, pipe)
                continue
            children[name] = (proc, pipe)
            clients[name] = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic=topic, server=host,
                                                 exchange=EXCHANGE),
                timeout=30)
            for _ in range(50):  # warm up: connections, reply queue
                clients[name].call({}, 'ping')
    for name in names:
        results[name] = {'casts_per_s': statistics.median(rates[name]),
                         'cast_ratios': [o / x for o, x in zip(
                             rates['ours'], rates[name])]}
    cpu = {name: _cpu(pipe) for name, (_, pipe) in children.items()}
    for name, r in measure_calls(clients, args.calls).items():
        results[name].update(r)
        # The server process's CPU (all its threads) per call: on a small
        # host it competes with the client and the broker for the CPUs.
        results[name]['cpu_us'] = (_cpu(children[name][1]) - cpu[name]) \
            / args.calls * 1e6
    for proc, pipe in children.values():
        stop_server(proc, pipe)
    reply_q = getattr(getattr(transport, '_driver', None), '_reply_q', None)
    transport.cleanup()
    with kombu.Connection(AMQP_URL) as c:
        ch = c.channel()
        if reply_q:
            ch.queue_delete(reply_q)
        ch.exchange_delete(EXCHANGE)
    return report(results, rates)


def report(results, rates):
    print('%-6s %10s %10s %13s %12s   %s' % (
        '', 'call p50', 'call mean', 'CPU per call', 'casts/s',
        'casts/s per round'))
    for name, r in results.items():
        print('%-6s %8.2fms %8.2fms %11.0fus %12.0f   %s' % (
            name, r['p50_ms'], r['mean_ms'], r['cpu_us'], r['casts_per_s'],
            ' '.join('%.0f' % x for x in rates[name])))
    ours_r = results['ours']
    ok = True
    for other in ('oslo', 'floor', 'floorq'):
        r = results[other]
        call = ours_r['p50_ms'] / r['p50_ms']
        casts = statistics.median(r['cast_ratios'])
        line = ('ours/%-5s call p50 %.2fx  call mean %.2fx  cast throughput '
                '%.2fx (median of rounds: %s)' % (
                    other, call, ours_r['mean_ms'] / r['mean_ms'], casts,
                    ' '.join('%.2f' % x for x in r['cast_ratios'])))
        print(line)
        if other == 'floor':
            floor_call, floor_casts = call, casts
        if other == 'floorq':
            floorq_call = call
    print('(call ratio < 1 and throughput ratio > 1 favour ours)')
    print()
    for label, value, target, good in (
            ('call p50, ours / raw kombu responder', floor_call,
             '<= %.2fx' % TARGET_CALL_P50, floor_call <= TARGET_CALL_P50),
            ('cast throughput, ours / raw kombu responder', floor_casts,
             '>= %.2fx' % TARGET_CASTS, floor_casts >= TARGET_CASTS)):
        print('%-44s %6.2fx  target %s  %s' % (label, value, target,
                                              'PASS' if good else 'MISS'))
        ok = ok and good
    # What the broker adds: oslo's client publishes persistent messages,
    # which the agent's durable queue (the wire contract's) stores and a
    # transient one does not.
    print('%-44s %6.2fx  (the floor: the same responder on the agent\'s '
          'durable queues)' % ('call p50, ours / raw responder, our queues',
                               floorq_call))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
