"""The broker objects the agent declares (docs: protocol-transport).

Flags must equal what oslo.messaging peers declare for shared objects (the
control exchange, the fanout exchange) or RabbitMQ closes the channel with
406 PRECONDITION_FAILED; the server queues are the agent's own.
"""

import logging
import unicodedata

import amqp

LOG = logging.getLogger(__name__)

FANOUT_QUEUE_EXPIRES_MS = 30 * 60 * 1000
MAX_NAME_BYTES = 255          # AMQP 0-9-1 shortstr: queue names, routing keys
WILDCARDS = ('*', '#')        # in a binding key they would match other hosts


def names(conf):
    topic, host = conf.rpc.topic, conf.host
    return {
        'exchange': conf.control_exchange,
        'topic_queue': topic,
        'host_queue': '%s.%s' % (topic, host),
        'fanout_exchange': '%s_fanout' % topic,
        'fanout_queue': '%s_fanout_%s' % (topic, host),
        'dlx': '%s.dlx' % topic,
        'dead_queue': '%s.dead' % topic,
    }


def host_problem(conf):
    """Why ``[DEFAULT] host`` cannot name this agent's queues, or None.

    ``host`` is nova's opaque string (``compute_01.dc1`` is fine); it only
    has to make valid queue names and binding keys.
    """
    host = conf.host
    if not host:
        return 'must not be empty'
    if any(unicodedata.category(c) in ('Cc', 'Cf', 'Zl', 'Zp') or c.isspace()
           for c in host):
        return 'must not contain white space or control characters'
    if any(w in host for w in WILDCARDS):
        return 'must not contain AMQP wildcards (* or #)'
    for key in ('host_queue', 'fanout_queue'):
        name = names(conf)[key]
        if len(name.encode('utf-8')) > MAX_NAME_BYTES:
            return 'queue name %r is longer than %d bytes' % (
                name[:40] + '...', MAX_NAME_BYTES)
    return None


# What the shared <topic> queue and the fanout may carry (docs: protocol-host-queue-only):
# no single host's journal could keep an instance method from running on
# two hosts, so instance methods come only through <topic>.<host>.
SHARED_METHODS = frozenset({'ping', 'get_host_stats', 'list_instances'})


def server_queue_arguments(conf):
    n = names(conf)
    args = {'x-dead-letter-exchange': n['dlx']}
    if conf.rpc.rabbit_quorum_queue:
        args['x-queue-type'] = 'quorum'
        if conf.rpc.rabbit_delivery_limit:
            args['x-delivery-limit'] = conf.rpc.rabbit_delivery_limit
    return args


def dead_queue_arguments(conf):
    """A quorum queue in quorum mode (1.1): a classic one lives on one node
    and is unavailable while that node is down."""
    return {'x-queue-type': 'quorum'} if conf.rpc.rabbit_quorum_queue else {}


def declare(channel, conf):
    """Declare what serving needs on a py-amqp channel; return the queues to
    consume. The dead-letter queue is not among it: see declare_dead."""
    n = names(conf)
    # Same flags as oslo.messaging's topic_send/declare_topic_consumer.
    channel.exchange_declare(n['exchange'], 'topic',
                             durable=conf.rpc.amqp_durable_queues,
                             auto_delete=False)
    # Exchanges live on every node: declaring the dead-letter exchange
    # never depends on the node that holds <topic>.dead.
    channel.exchange_declare(n['dlx'], 'fanout', durable=True,
                             auto_delete=False)

    args = server_queue_arguments(conf)
    for queue in (n['topic_queue'], n['host_queue']):
        channel.queue_declare(queue, durable=True, auto_delete=False,
                              arguments=args)
        channel.queue_bind(queue, n['exchange'], routing_key=queue)

    # oslo's fanout exchange: non-durable, auto_delete (fanout_send declares
    # it this way). The fanout queue stays a non-durable classic queue even
    # in quorum mode: quorum queues must be durable, and a per-host fanout
    # queue that expires after 30 idle minutes has nothing worth replicating.
    channel.exchange_declare(n['fanout_exchange'], 'fanout', durable=False,
                             auto_delete=True)
    channel.queue_declare(n['fanout_queue'], durable=False, auto_delete=False,
                          arguments={'x-expires': FANOUT_QUEUE_EXPIRES_MS,
                                     'x-dead-letter-exchange': n['dlx']})
    channel.queue_bind(n['fanout_queue'], n['fanout_exchange'],
                       routing_key=conf.rpc.topic)
    return [n['host_queue'], n['topic_queue'], n['fanout_queue']]


def declare_dead(connection, conf):
    """Declare and bind ``<topic>.dead`` on a channel of its own.

    Returns None when done, else the error (logged by the caller, tried
    again later): an unavailable dead-letter queue (its node down, or a
    classic queue where a quorum one is asked for: 406) must never stop the
    agent from consuming (docs: protocol-transport). Meanwhile rejected
    messages still go to the dead-letter exchange; RabbitMQ drops those no
    available queue takes.
    """
    n = names(conf)
    try:
        _on_channel(connection, lambda ch: ch.queue_declare(
            n['dead_queue'], durable=True, auto_delete=False,
            arguments=dead_queue_arguments(conf)))
    except amqp.exceptions.PreconditionFailed as e:
        # It exists with other arguments (a classic queue from before 1.1):
        # keep it and bind it; an operator may delete it to have it made a
        # quorum queue.
        LOG.error('%s exists with other arguments than %s (%s); kept as it '
                  'is', n['dead_queue'], dead_queue_arguments(conf), e)
    except amqp.exceptions.ChannelError as e:
        return e
    try:
        _on_channel(connection, lambda ch: ch.queue_bind(
            n['dead_queue'], n['dlx'], routing_key=''))
    except amqp.exceptions.ChannelError as e:
        return e
    return None


def _on_channel(connection, operation):
    """Run one operation on a fresh channel: a channel error closes only
    that channel, never the connection the agent consumes on."""
    channel = connection.channel()
    operation(channel)
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - it did its work
        pass


def delete(channel, conf):
    """Remove what ``declare`` made (tests and decommissioning)."""
    n = names(conf)
    for q in (n['host_queue'], n['topic_queue'], n['fanout_queue'],
              n['dead_queue']):
        channel.queue_delete(q)
    for ex in (n['fanout_exchange'], n['dlx']):
        channel.exchange_delete(ex)


def consumer_cancelled(consumer_tag):
    """basic_consume's on_cancel: the broker cancelled a consumer (queue
    deleted, node failover); raising makes the server start over on a fresh
    connection."""
    raise amqp.exceptions.ConsumerCancelled(
        'consumer %s cancelled by the broker' % consumer_tag)
