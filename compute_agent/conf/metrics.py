"""[metrics] options: the Prometheus endpoint."""

from oslo_config import cfg

from compute_agent.conf import base

group = cfg.OptGroup('metrics', title='Prometheus metrics')

opts = [
    cfg.BoolOpt('enabled', default=False,
                help='Serve Prometheus metrics over HTTP.'),
    cfg.HostAddressOpt('listen_address', default='127.0.0.1',
                       help='Address of the metrics endpoint.'),
    cfg.PortOpt('port', default=9464, help='Port of the metrics endpoint.'),
]


def register(conf):
    base.register_group_opts(conf, group, opts)
