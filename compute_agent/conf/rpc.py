"""Messaging options: [DEFAULT] as oslo.messaging names them, plus [rpc].

``transport_url``, ``control_exchange`` and the rabbit flags keep
oslo.messaging's names and defaults, so one config file can serve both.
"""

from oslo_config import cfg

from compute_agent.conf import base

group = cfg.OptGroup('rpc', title='RPC server options')

default_opts = [
    cfg.StrOpt(
        'transport_url', secret=True,
        default='rabbit://guest:guest@localhost:5672/',
        help='Broker URL, rabbit:// or amqps://; several comma-separated '
             'hosts are a cluster, tried in turn.'),
    cfg.StrOpt(
        'control_exchange', default='openstack',
        help='Topic exchange requests and reports travel on.'),
]

opts = [
    cfg.StrOpt('topic', default='compute',
               help='Topic the agent serves; its queues are <topic>, '
                    '<topic>.<host> and <topic>_fanout_<host>.'),
    cfg.StrOpt('state_topic', default='scheduler',
               help='Topic state reports are cast to.'),
    cfg.BoolOpt('amqp_durable_queues', default=False,
                help='Declare the control exchange durable (must match '
                     'every oslo.messaging peer).'),
    cfg.BoolOpt('rabbit_quorum_queue', default=False,
                help='Declare the agent\'s server queues as quorum queues.'),
    cfg.IntOpt('rabbit_delivery_limit', default=0, min=0,
               help='With quorum queues, dead-letter a message after this '
                    'many redeliveries; 0 leaves it unlimited.'),
    cfg.IntOpt('heartbeat', default=60, min=0,
               help='AMQP heartbeat timeout in seconds; 0 disables.'),
    cfg.IntOpt('prefetch_count', default=64, min=1,
               help='Unacknowledged messages the broker may hand the agent '
                    'at once.'),
    cfg.FloatOpt('reconnect_interval', default=1.0, min=0.0,
                 help='First wait before reconnecting to the broker.'),
    cfg.FloatOpt('reconnect_interval_max', default=30.0, min=0.0,
                 help='Longest wait between reconnect attempts.'),
    cfg.IntOpt('reconnect_max_attempts', default=0, min=0,
               help='Give up after this many failed reconnects; 0 retries '
                    'forever.'),
    cfg.IntOpt('reply_timeout', default=60, min=1,
               help='Seconds to keep retrying a reply whose reply queue is '
                    'missing.'),
    cfg.IntOpt('outbox_max', default=100000, min=1,
               help='Replies and reports held on disk while the broker is '
                    'away; beyond this the oldest reports are dropped '
                    '(logged).'),
    cfg.IntOpt('max_message_bytes', default=4 * 1024 * 1024, min=1024,
               help='Largest request body read; a larger one is '
                    'dead-lettered unread (RabbitMQ itself accepts 128 MB).'),
    cfg.IntOpt('max_json_depth', default=32, min=4, max=500,
               help='Deepest nesting of objects and lists in a request; '
                    'deeper is invalid.'),
    cfg.IntOpt('max_string_length', default=256 * 1024, min=1024,
               help='Longest string value in a request, in characters; '
                    'longer is invalid.'),
    cfg.IntOpt('max_key_length', default=255, min=32,
               help='Longest object key, method name or id in a request, '
                    'in characters; longer is invalid.'),
    cfg.IntOpt('max_message_items', default=20000, min=100,
               help='Most values (objects, lists, strings, numbers...) in '
                    'one request; more is invalid.'),
    cfg.BoolOpt('ssl', default=False,
                help='Connect with TLS (implied by amqps://).'),
    cfg.StrOpt('ssl_ca_file', default=None,
               help='CA bundle that signs the broker\'s certificate.'),
    cfg.StrOpt('ssl_cert_file', default=None,
               help='Client certificate, for brokers that ask for one.'),
    cfg.StrOpt('ssl_key_file', default=None,
               help='Private key of ssl_cert_file.'),
]


def register(conf):
    conf.register_opts(default_opts)
    base.register_group_opts(conf, group, opts)
