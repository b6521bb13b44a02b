"""compute-agent-ctl: drive an agent over RPC from a shell.

    compute-agent-ctl --transport-url rabbit://... --host node1 ping
    compute-agent-ctl --config-file /etc/compute-agent/compute-agent.conf \\
        spawn --request spawn.json --wait

State-changing commands are calls (print the final record) unless --wait is
given: then the watcher is started first, the request is sent as a cast and
every state report of the instance is printed until the operation settles;
the exit status is 1 when the instance ends in vm_state error.
"""

import argparse
import json
import sys
import time

from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent.rpc import client as client_mod

STATE_COMMANDS = {
    'rescue': 'rescue', 'unrescue': 'unrescue', 'reboot': 'reboot',
    'power-off': 'power_off', 'power-on': 'power_on', 'pause': 'pause',
    'unpause': 'unpause', 'suspend': 'suspend', 'resume': 'resume',
    'destroy': 'destroy',
}


def build_parser():
    p = argparse.ArgumentParser(prog='compute-agent-ctl',
                                description=__doc__.splitlines()[0])
    p.add_argument('--config-file', action='append', default=[],
                   help='Agent config file (transport_url, host, topics).')
    p.add_argument('--transport-url', help='Overrides the config file.')
    p.add_argument('--host', help='Agent host (its queue <topic>.<host>).')
    p.add_argument('--json', action='store_true', help='Print JSON.')
    p.add_argument('--timeout', type=float, default=60,
                   help='Seconds of silence before giving up (default 60).')
    sub = p.add_subparsers(dest='command', required=True)

    spawn = sub.add_parser('spawn', help='Create and start an instance.')
    spawn.add_argument('--request', metavar='FILE.json',
                       help='JSON object with the spawn args.')
    spawn.add_argument('--uuid')
    spawn.add_argument('--name')
    spawn.add_argument('--memory-mb', type=int, default=512)
    spawn.add_argument('--vcpus', type=int, default=1)
    spawn.add_argument('--root-gb', type=int, default=1)
    spawn.add_argument('--image', help='Image id of the root disk.')
    spawn.add_argument('--disk-format', default='qcow2')
    spawn.add_argument('--wait', action='store_true')

    for name in STATE_COMMANDS:
        sp = sub.add_parser(name, help='%s an instance.' % name)
        sp.add_argument('uuid')
        sp.add_argument('--wait', action='store_true')
        sp.add_argument('--instance', metavar='FILE.json',
                        help='The instance object (or a spawn request '
                             'holding one); default: built from get_info.')
        if name == 'reboot':
            sp.add_argument('--hard', action='store_true')
    for name in ('info', 'console', 'vnc'):
        sub.add_parser(name).add_argument('uuid')
    sub.add_parser('list')
    sub.add_parser('host-stats')
    sub.add_parser('ping')
    w = sub.add_parser('watch', help='Print state reports as they come.')
    w.add_argument('uuid', nargs='?')
    return p


def make_client(opts):
    # A private ConfigOpts: main() may run inside a process (tests) whose
    # global CONF must not pick up this command's files.
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=opts.config_file)
    host = opts.host or conf.host
    return client_mod.AgentClient(
        opts.transport_url or conf.transport_url, host,
        topic=conf.rpc.topic, exchange=conf.control_exchange,
        timeout=opts.timeout, state_topic=conf.rpc.state_topic,
        durable_exchange=conf.rpc.amqp_durable_queues,
        context={'request_id': 'req-ctl-%d' % int(time.time() * 1000)},
        conf=conf)


def spawn_args(opts):
    if opts.request:
        with open(opts.request) as f:
            return json.load(f)
    missing = [n for n in ('uuid', 'name', 'image') if not getattr(opts, n)]
    if missing:
        raise SystemExit('spawn needs --request or --%s'
                         % ', --'.join(missing))
    return {
        'instance': {'uuid': opts.uuid, 'name': opts.name,
                     'image_ref': opts.image,
                     'flavor': {'memory_mb': opts.memory_mb,
                                'vcpus': opts.vcpus,
                                'root_gb': opts.root_gb}},
        'image_meta': {'id': opts.image, 'disk_format': opts.disk_format},
    }


def instance_of(opts, client):
    """The ``instance`` arg of a non-spawn command.

    The agent acts on its stored copy of the instance; the wire still wants
    a valid instance object, so without --instance one is built from the
    record with a nominal flavor.
    """
    if opts.instance:
        with open(opts.instance) as f:
            obj = json.load(f)
        return obj.get('instance', obj)
    record = client.get_info(opts.uuid)
    return {'uuid': opts.uuid, 'name': record['name'],
            'flavor': {'memory_mb': 1, 'vcpus': 1, 'root_gb': 0}}


def request_of(opts, client):
    """(method, args) for a state-changing command."""
    if opts.command == 'spawn':
        return 'spawn', spawn_args(opts)
    args = {'instance': instance_of(opts, client)}
    if opts.command == 'reboot':
        args['reboot_type'] = 'HARD' if opts.hard else 'SOFT'
    return STATE_COMMANDS[opts.command], args


def show(opts, value):
    if opts.json:
        print(json.dumps(value, indent=2, sort_keys=True))
    elif isinstance(value, list):
        for item in value:
            print(json.dumps(item, sort_keys=True))
    else:
        print(json.dumps(value, indent=2, sort_keys=True))


def wait_for_settle(opts, watcher, uuid):
    """Print reports until task_state is null after a .end/.error event."""
    deadline = time.monotonic() + opts.timeout
    while True:
        event = watcher.get(timeout=max(0.0, deadline - time.monotonic()))
        if event is None:
            print('timed out waiting for %s' % uuid, file=sys.stderr)
            return 2
        method, args, _ = event
        if method != 'instance_state_changed':
            continue
        deadline = time.monotonic() + opts.timeout
        print(json.dumps(args, sort_keys=True) if opts.json
              else client_mod.report_line(args), flush=True)
        ev = args.get('event') or ''
        if args.get('task_state') is None and (ev.endswith('.end') or
                                               ev.endswith('.error')):
            return 1 if args.get('vm_state') == 'error' else 0


def run(opts, client):
    cmd = opts.command
    if cmd in STATE_COMMANDS or cmd == 'spawn':
        method, args = request_of(opts, client)
        uuid = (args.get('instance') or {}).get('uuid')
        if not opts.wait:
            show(opts, client.call_args(method, args))
            return 0
        watcher = client.open_watch(uuid)
        try:
            client.cast(method, **args)
            return wait_for_settle(opts, watcher, uuid)
        finally:
            watcher.stop()
    if cmd == 'watch':
        watcher = client.open_watch(opts.uuid)
        try:
            while True:
                event = watcher.get(timeout=1)
                if event is None:
                    continue
                method, args, _ = event
                if opts.json:
                    print(json.dumps({'method': method, 'args': args},
                                     sort_keys=True), flush=True)
                elif method == 'instance_state_changed':
                    print(args.get('instance_uuid'),
                          client_mod.report_line(args), flush=True)
                else:
                    print(method, json.dumps(args, sort_keys=True),
                          flush=True)
        except KeyboardInterrupt:
            return 0
        finally:
            watcher.stop()
    calls = {
        'info': lambda: client.get_info(opts.uuid),
        'console': lambda: client.get_console_output(opts.uuid),
        'vnc': lambda: client.get_vnc_console(opts.uuid),
        'list': client.list_instances,
        'host-stats': client.get_host_stats,
        'ping': client.ping,
    }
    result = calls[cmd]()
    if cmd == 'console' and not opts.json and isinstance(result, str):
        print(result)
    else:
        show(opts, result)
    return 0


def main(argv=None):
    opts = build_parser().parse_args(argv)
    try:
        with make_client(opts) as client:
            return run(opts, client)
    except client_mod.RemoteError as e:
        print('error: %s: %s' % (e.exc_type, e.value), file=sys.stderr)
        return 1
    except (client_mod.Timeout, client_mod.Unroutable) as e:
        print('error: %s' % e, file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
