"""2012-era broker options (``rabbit_host``...) and the transport URL.

Folsom's nova.conf named the broker with ``[DEFAULT] rabbit_host``,
``rabbit_port``, ``rabbit_userid``, ``rabbit_password`` and
``rabbit_virtual_host`` (Grizzly added ``rabbit_hosts``; Kilo to Rocky read
them from ``[oslo_messaging_rabbit]``). They are accepted, deprecated, and
make the transport URL when ``transport_url`` itself is unset: an explicit
``transport_url`` always wins.
"""

import urllib.parse

from oslo_config import cfg

DEFAULT_URL = 'rabbit://guest:guest@localhost:5672/'
_REASON = 'Use transport_url (oslo.messaging syntax).'


def _old(name):
    return [cfg.DeprecatedOpt(name, group='oslo_messaging_rabbit')]


opts = [
    cfg.StrOpt('rabbit_host', default=None, deprecated_opts=_old('rabbit_host'),
               deprecated_for_removal=True, deprecated_reason=_REASON,
               help='Broker host name (default localhost).'),
    cfg.PortOpt('rabbit_port', default=None, deprecated_opts=_old('rabbit_port'),
                deprecated_for_removal=True, deprecated_reason=_REASON,
                help='Broker port (default 5672).'),
    cfg.ListOpt('rabbit_hosts', default=None,
                deprecated_opts=_old('rabbit_hosts'),
                deprecated_for_removal=True, deprecated_reason=_REASON,
                help='Broker cluster as host[:port] entries; wins over '
                     'rabbit_host.'),
    cfg.StrOpt('rabbit_userid', default=None,
               deprecated_opts=_old('rabbit_userid'),
               deprecated_for_removal=True, deprecated_reason=_REASON,
               help='Broker user (default guest).'),
    cfg.StrOpt('rabbit_password', default=None, secret=True,
               deprecated_opts=_old('rabbit_password'),
               deprecated_for_removal=True, deprecated_reason=_REASON,
               help='Broker password (default guest).'),
    cfg.StrOpt('rabbit_virtual_host', default=None,
               deprecated_opts=_old('rabbit_virtual_host'),
               deprecated_for_removal=True, deprecated_reason=_REASON,
               help='Broker virtual host (default /).'),
]


def register(conf):
    conf.register_opts(opts)


def transport_url(conf):
    """The broker URL in effect: ``transport_url``, else one made from the
    deprecated rabbit_* options, else the local guest broker."""
    if conf.transport_url:
        return conf.transport_url
    if all(conf[o.dest] is None for o in opts):
        return DEFAULT_URL
    port = conf.rabbit_port or 5672
    hosts = conf.rabbit_hosts or [conf.rabbit_host or 'localhost']
    user = _quote(conf.rabbit_userid if conf.rabbit_userid is not None
                  else 'guest')
    password = _quote(conf.rabbit_password if conf.rabbit_password is not None
                      else 'guest')
    netlocs = ['%s:%s@%s:%s' % ((user, password) + _host_port(entry, port))
               for entry in hosts]
    vhost = conf.rabbit_virtual_host
    path = '/' if vhost in (None, '', '/') else '/' + _quote(vhost)
    return 'rabbit://%s%s' % (','.join(netlocs), path)


def _host_port(entry, port):
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 literal."""
    entry = entry.strip()
    if entry.startswith('['):
        host, _, rest = entry[1:].partition(']')
        return '[%s]' % host, rest[1:] if rest.startswith(':') else port
    if entry.count(':') == 1:
        host, _, entry_port = entry.partition(':')
        return host, entry_port or port
    if ':' in entry:
        return '[%s]' % entry, port
    return entry, port


def _quote(text):
    return urllib.parse.quote(text, safe='')
