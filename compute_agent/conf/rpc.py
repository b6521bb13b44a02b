"""Messaging options: [DEFAULT] as oslo.messaging names them, plus [rpc].

``transport_url``, ``control_exchange`` and the rabbit flags keep
oslo.messaging's names and defaults, so one config file can serve both.
A nova.conf's ``[oslo_messaging_rabbit]`` options and their older names
(``rabbit_use_ssl``, ``kombu_ssl_*``, ``rabbit_durable_queues``... in
``[DEFAULT]``) are read as deprecated names of the ``[rpc]`` ones.
"""

from oslo_config import cfg
from oslo_config import types

from compute_agent.conf import base

group = cfg.OptGroup('rpc', title='RPC server options')
RABBIT = 'oslo_messaging_rabbit'
SSL_VERSIONS = ('TLSv1', 'TLSv1_1', 'TLSv1_2', 'TLSv1_3', 'SSLv23', 'TLS')


def _old(*names):
    """Deprecated names: (group, name) pairs or bare [oslo_messaging_rabbit]
    names."""
    return [cfg.DeprecatedOpt(n[1], group=n[0]) if isinstance(n, tuple)
            else cfg.DeprecatedOpt(n, group=RABBIT) for n in names]

default_opts = [
    cfg.StrOpt(
        'transport_url', secret=True, default=None,
        help='Broker URL, rabbit:// or amqps://; several comma-separated '
             'hosts are a cluster, tried in turn. Unset: built from the '
             'deprecated rabbit_host/rabbit_hosts/rabbit_port/rabbit_userid/'
             'rabbit_password/rabbit_virtual_host when any is set, else '
             'rabbit://guest:guest@localhost:5672/.'),
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
                deprecated_opts=_old('amqp_durable_queues',
                                     ('DEFAULT', 'amqp_durable_queues'),
                                     ('DEFAULT', 'rabbit_durable_queues')),
                help='Declare the control exchange durable (must match '
                     'every oslo.messaging peer).'),
    cfg.BoolOpt('rabbit_quorum_queue', default=False,
                deprecated_opts=_old('rabbit_quorum_queue'),
                help='Declare the agent\'s server queues as quorum queues.'),
    cfg.IntOpt('rabbit_delivery_limit', default=0, min=0,
               deprecated_opts=_old('rabbit_quorum_delivery_limit'),
               help='With quorum queues, dead-letter a message after this '
                    'many redeliveries; 0 leaves it unlimited.'),
    cfg.IntOpt('heartbeat', default=60, min=0,
               deprecated_opts=_old('heartbeat_timeout_threshold'),
               help='AMQP heartbeat timeout in seconds; 0 disables.'),
    cfg.IntOpt('prefetch_count', default=200, min=1,
               help='Unacknowledged messages the broker may hand the agent '
                    'at once. A message is acknowledged only once its '
                    'outcome is on disk, so this window bounds the casts '
                    'in flight across a journal commit, and with it cast '
                    'throughput; the agent may hold up to this many times '
                    'max_message_bytes of request bodies.'),
    cfg.FloatOpt('reconnect_interval', default=1.0, min=0.0,
                 deprecated_opts=_old('rabbit_retry_interval',
                                      ('DEFAULT', 'rabbit_retry_interval')),
                 help='First wait before reconnecting to the broker.'),
    cfg.FloatOpt('reconnect_interval_max', default=30.0, min=0.0,
                 deprecated_opts=_old('rabbit_interval_max'),
                 help='Longest wait between reconnect attempts.'),
    cfg.IntOpt('reconnect_max_attempts', default=0, min=0,
               deprecated_opts=_old('rabbit_max_retries',
                                    ('DEFAULT', 'rabbit_max_retries')),
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
                deprecated_opts=_old('ssl', 'rabbit_use_ssl',
                                     ('DEFAULT', 'rabbit_use_ssl')),
                help='Connect with TLS (implied by amqps://).'),
    cfg.StrOpt('ssl_ca_file', default=None,
               deprecated_opts=_old('ssl_ca_file', 'kombu_ssl_ca_certs',
                                    ('DEFAULT', 'kombu_ssl_ca_certs')),
               help='CA bundle that signs the broker\'s certificate.'),
    cfg.StrOpt('ssl_cert_file', default=None,
               deprecated_opts=_old('ssl_cert_file', 'kombu_ssl_certfile',
                                    ('DEFAULT', 'kombu_ssl_certfile')),
               help='Client certificate, for brokers that ask for one.'),
    cfg.StrOpt('ssl_key_file', default=None,
               deprecated_opts=_old('ssl_key_file', 'kombu_ssl_keyfile',
                                    ('DEFAULT', 'kombu_ssl_keyfile')),
               help='Private key of ssl_cert_file.'),
    cfg.Opt('ssl_version', default=None,
            type=types.String(choices=SSL_VERSIONS + ('',), ignore_case=True),
            deprecated_opts=_old('ssl_version', 'kombu_ssl_version',
                                 ('DEFAULT', 'kombu_ssl_version')),
            help='Pin the TLS version (TLSv1_2, TLSv1_3...); unset, empty or '
                 'SSLv23/TLS negotiates the highest both sides know.'),
]


def register(conf):
    conf.register_opts(default_opts)
    base.register_group_opts(conf, group, opts)
