"""compute-agent-render: print the domain XML a spawn would define.

A dry run of the guest builder on this host's configuration: the request is
validated as the agent would (exit 2 naming the field), and the XML is
checked against libvirt's schema before it is printed (a failure there is a
bug in the agent: exit 1).
"""

import argparse
import json
import logging
import sys

from compute_agent import conf as ca_conf
from compute_agent import exception
from compute_agent import validation
from compute_agent.cmd import common
from compute_agent.vif.loader import VifDrivers
from compute_agent.virt import builder
from compute_agent.virt import schema


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='compute-agent-render',
        description='Print the libvirt domain XML for the args of a spawn '
                    'message (docs: protocol-methods, protocol-objects).')
    parser.add_argument('--version', action='version',
                        version=common.version_string('compute-agent-render'))
    parser.add_argument('--config-file', action='append', default=[],
                        help='Agent configuration file (repeatable; default '
                             '%s when it exists).' % common.CONFIG_FILE)
    parser.add_argument('--request', required=True,
                        help='JSON file holding the "args" of a spawn message.')
    parser.add_argument('--rescue', action='store_true',
                        help='Render the rescue guest instead.')
    return parser.parse_args(argv)


def render(conf, args, rescue=False):
    """Validated spawn args -> checked domain XML text."""
    args = validation.validate('spawn', args)
    plan = builder.build(conf, args['instance'], args['image_meta'],
                         args['network_info'], args['block_device_info'],
                         rescue=rescue, vif_drivers=VifDrivers(conf))
    schema.validate_domain(plan.domain.node)
    return plan.domain.to_xml()


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    # Keep stderr to the one line that names a bad field (no deprecation
    # chatter from oslo.config about 2012 option names).
    logging.basicConfig(level=logging.ERROR)
    conf = ca_conf.CONF
    try:
        conf(['--config-file=%s' % f for f in opts.config_file],
             project='compute-agent',
             default_config_files=common.default_config_files(),
             default_config_dirs=common.default_config_dirs())
        ca_conf.check(conf)
    except Exception as e:  # oslo.config's own errors, or ConfigError
        print('compute-agent-render: configuration: %s' % e, file=sys.stderr)
        return 2
    try:
        with open(opts.request, encoding='utf-8') as f:
            args = json.load(f)
    except (OSError, ValueError) as e:
        print('compute-agent-render: request: %s' % e, file=sys.stderr)
        return 2
    try:
        xml = render(conf, args, rescue=opts.rescue)
    except exception.InvalidRequest as e:
        print('compute-agent-render: %s: %s' % (e.field, e.reason),
              file=sys.stderr)
        return 2
    except exception.GuestXMLInvalid as e:
        print('compute-agent-render: BUG: %s' % e.message, file=sys.stderr)
        return 1
    sys.stdout.write(xml)
    return 0


if __name__ == '__main__':
    sys.exit(main())
