"""compute-agent-ctl: drive an agent over RPC from a shell.

    compute-agent-ctl --transport-url rabbit://... --host node1 ping
    compute-agent-ctl spawn --request spawn.json --wait
    compute-agent-ctl list --json

The configuration is read from --config-file, else from
/etc/compute-agent/compute-agent.conf when it exists. State-changing
commands are calls (print the final record) unless --wait is given: then the
watcher is started first, the request is sent as a cast and every state
report of the instance is printed until the operation settles. Every failure
is one line on stderr, ``error: ...``, and a documented exit status.
"""

import argparse
import json
import logging
import os
import sys
import time

from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent.cmd import common
from compute_agent.cmd import dead_letters
from compute_agent.cmd import tables
from compute_agent.rpc import client as client_mod
from compute_agent.rpc import transport

# Exit statuses (also in the --help epilog and README.rst).
EXIT_OK = 0
EXIT_REMOTE = 1     # the agent answered with an error / the instance ended in error
EXIT_USAGE = 2      # bad arguments, unreadable or invalid request file
EXIT_CONFIG = 3     # missing or invalid configuration
EXIT_BROKER = 4     # the broker is unreachable, refused the login or an operation
EXIT_TIMEOUT = 5    # no reply (nor heartbeat) within --timeout
EXIT_NO_AGENT = 6   # no queue takes the request: no agent serves that host

EPILOG = '''exit status:
  0  success
  1  the agent answered with an error, or the instance ended in vm_state error
  2  usage: bad arguments, or an unreadable or invalid request file
  3  configuration: a missing config file or an invalid option
  4  the broker is unreachable, refused the login or an operation
  5  timeout: no reply within --timeout seconds of silence
  6  no agent serves that host (the request was unroutable)

The configuration is --config-file, else %s when it exists.''' % common.CONFIG_FILE

STATE_COMMANDS = {
    'rescue': ('rescue', 'Boot an instance from its rescue image.'),
    'unrescue': ('unrescue', 'Return a rescued instance to its own disk.'),
    'reboot': ('reboot', 'Reboot an instance (soft unless --hard).'),
    'power-off': ('power_off', 'Power an instance off.'),
    'power-on': ('power_on', 'Power an instance on.'),
    'pause': ('pause', 'Pause an instance (kept in memory).'),
    'unpause': ('unpause', 'Resume a paused instance.'),
    'suspend': ('suspend', 'Suspend an instance (saved to disk).'),
    'resume': ('resume', 'Resume a suspended instance.'),
    'destroy': ('destroy', 'Destroy an instance and remove its files.'),
}
READ_COMMANDS = {
    'info': 'Show one instance record.',
    'console': "Print the end of an instance's serial console log.",
    'vnc': "Show an instance's VNC host and port.",
}


class Failure(Exception):
    """A one-line error with its exit status."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2."""

    def error(self, message):
        raise Failure('%s (see %s --help)' % (message, self.prog), EXIT_USAGE)


def _anywhere(parser, top):
    """Options accepted before and after the subcommand. Below the top
    level their default is SUPPRESS so that they do not reset a value
    given before the subcommand."""
    def default(value):
        return value if top else argparse.SUPPRESS
    parser.add_argument('--json', action='store_true', default=default(False),
                        help='Print JSON instead of tables.')
    parser.add_argument('--timeout', type=float, default=default(60.0),
                        help='Seconds of silence before giving up (default 60).')
    parser.add_argument('--host', default=default(None),
                        help='Agent host (its queue <topic>.<host>); default: '
                             '[DEFAULT] host of the config.')


def _sub(sub, name, help_text, **kw):
    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog=EPILOG, formatter_class=_Formatter, **kw)
    _anywhere(p, top=False)
    return p


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser():
    p = Parser(prog='compute-agent-ctl', description=__doc__.splitlines()[0],
               epilog=EPILOG, formatter_class=_Formatter)
    p.add_argument('--version', action='version',
                   version=common.version_string('compute-agent-ctl'))
    p.add_argument('--config-file', action='append', default=[],
                   help='Agent config file (transport_url, host, topics); '
                        'default %s when it exists.' % common.CONFIG_FILE)
    p.add_argument('--transport-url', help='Overrides the config file.')
    _anywhere(p, top=True)
    sub = p.add_subparsers(dest='command', required=True, metavar='COMMAND')

    spawn = _sub(sub, 'spawn', 'Create and start an instance.')
    spawn.add_argument('--request', metavar='FILE.json',
                       help='JSON object with the spawn args (docs: protocol-versions).')
    spawn.add_argument('--uuid', help='Instance uuid (without --request).')
    spawn.add_argument('--name', help='Instance name (without --request).')
    spawn.add_argument('--memory-mb', type=int, default=512,
                       help='Flavor memory in MiB (default 512).')
    spawn.add_argument('--vcpus', type=int, default=1,
                       help='Flavor vCPUs (default 1).')
    spawn.add_argument('--root-gb', type=int, default=1,
                       help='Flavor root disk in GiB (default 1).')
    spawn.add_argument('--image', help='Image id of the root disk.')
    spawn.add_argument('--disk-format', default='qcow2',
                       help='Disk format of the image (default qcow2).')
    spawn.add_argument('--wait', action='store_true',
                       help='Print each state report until the spawn settles.')

    for name, (_method, text) in STATE_COMMANDS.items():
        sp = _sub(sub, name, text)
        sp.add_argument('uuid', help='Instance uuid.')
        sp.add_argument('--wait', action='store_true',
                        help='Print each state report until it settles.')
        sp.add_argument('--instance', metavar='FILE.json',
                        help='The instance object (or a spawn request '
                             'holding one); default: built from get_info.')
        if name == 'reboot':
            sp.add_argument('--hard', action='store_true',
                            help='Hard reboot (power cycle).')
    for name, text in READ_COMMANDS.items():
        _sub(sub, name, text).add_argument('uuid', help='Instance uuid.')
    _sub(sub, 'list', 'List the instances of the host.')
    _sub(sub, 'host-stats', "Show the host's resources and usage.")
    _sub(sub, 'ping', 'Check that the agent answers.')
    w = _sub(sub, 'watch', 'Print state reports as they come (Ctrl-C ends).')
    w.add_argument('uuid', nargs='?', help='Only this instance.')

    dl = _sub(sub, 'dead-letters',
              'Dead-lettered requests (<topic>.dead): list, requeue, purge.')
    dls = dl.add_subparsers(dest='dl_command', required=True, metavar='ACTION')
    lst = _sub(dls, 'list', "List dead letters: method, instance, reason, age.")
    lst.add_argument('--limit', type=int, default=None,
                     help='Show at most this many.')
    for action, text in (('requeue', 'Send dead letters back to the queue '
                                     'they came from.'),
                         ('purge', 'Delete dead letters.')):
        a = _sub(dls, action, text)
        a.add_argument('ids', nargs='*', metavar='ID',
                       help='Message ids (the ID column of list).')
        a.add_argument('--all', action='store_true',
                       help='Every dead letter of the topic.')
    return p


# ------------------------------------------------------------ config

def load_conf(opts):
    # A private ConfigOpts: main() may run inside a process (tests) whose
    # global CONF must not pick up this command's files.
    conf = agent_conf.register_all(cfg.ConfigOpts())
    files = opts.config_file or common.default_config_files()
    try:
        conf([], project='compute-agent', default_config_files=files,
             default_config_dirs=[] if opts.config_file
             else common.default_config_dirs())
        url = opts.transport_url or conf.transport_url
        transport.parse_url(url)
        conf.host  # noqa: B018 - read now: a bad value is a config error
    except (cfg.Error, ValueError) as e:
        raise Failure('configuration: %s' % _one_line(e), EXIT_CONFIG) from None
    return conf, url


def make_client(opts, conf, url):
    return client_mod.AgentClient(
        url, opts.host or conf.host,
        topic=conf.rpc.topic, exchange=conf.control_exchange,
        timeout=opts.timeout, state_topic=conf.rpc.state_topic,
        durable_exchange=conf.rpc.amqp_durable_queues,
        context={'request_id': 'req-ctl-%d' % int(time.time() * 1000)},
        conf=conf)


def _one_line(error):
    return ' '.join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------ requests

def read_json(path, what):
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except OSError as e:
        raise Failure('%s %s: %s' % (what, path, e.strerror or e),
                      EXIT_USAGE) from None
    except ValueError as e:
        raise Failure('%s %s: not valid JSON: %s' % (what, path, e),
                      EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise Failure('%s %s: not a JSON object' % (what, path), EXIT_USAGE)
    return value


def spawn_args(opts):
    if opts.request:
        return read_json(opts.request, 'request file')
    missing = [n for n in ('uuid', 'name', 'image') if not getattr(opts, n)]
    if missing:
        raise Failure('spawn needs --request or --%s' % ', --'.join(missing),
                      EXIT_USAGE)
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
        obj = read_json(opts.instance, 'instance file')
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
    return STATE_COMMANDS[opts.command][0], args


# ------------------------------------------------------------ output

def show(opts, value):
    if opts.json:
        print(json.dumps(value, indent=2, sort_keys=True))
    elif isinstance(value, list):
        print(tables.rows(value, tables.INSTANCE_COLUMNS))
    elif isinstance(value, dict):
        print(tables.fields(value, tables.INSTANCE_ORDER))
    else:
        print(tables.cell(value))


def wait_for_settle(opts, watcher, uuid):
    """Print reports until task_state is null after a .end/.error event."""
    deadline = time.monotonic() + opts.timeout
    while True:
        event = watcher.get(timeout=max(0.0, deadline - time.monotonic()))
        if event is None:
            raise Failure('timed out after %gs of silence waiting for %s'
                          % (opts.timeout, uuid), EXIT_TIMEOUT)
        method, args, _ = event
        if method != 'instance_state_changed':
            continue
        deadline = time.monotonic() + opts.timeout
        print(json.dumps(args, sort_keys=True) if opts.json
              else client_mod.report_line(args), flush=True)
        ev = args.get('event') or ''
        if args.get('task_state') is None and (ev.endswith('.end') or
                                               ev.endswith('.error')):
            return EXIT_REMOTE if args.get('vm_state') == 'error' else EXIT_OK


def watch(opts, client):
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
                print(method, json.dumps(args, sort_keys=True), flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        watcher.stop()


def run_dead_letters(opts, conf, url):
    if opts.dl_command != 'list' and not (opts.all or opts.ids):
        raise Failure('dead-letters %s needs message ids or --all'
                      % opts.dl_command, EXIT_USAGE)
    dl = dead_letters.DeadLetters(transport.Broker(conf, url, heartbeat=0),
                                  conf)
    if opts.dl_command == 'list':
        result = dl.list(opts.limit)
    else:
        ids = None if opts.all else set(opts.ids)
        result = getattr(dl, opts.dl_command)(ids)
        missing = sorted(set(opts.ids) - {r['id'] for r in result})
        if missing and not opts.all:
            show_dead(opts, result)
            raise Failure('no dead letter with id %s' % ', '.join(missing),
                          EXIT_USAGE)
    show_dead(opts, result)
    return EXIT_OK


def show_dead(opts, result):
    if opts.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(tables.rows(result, tables.DEAD_LETTER_COLUMNS))


def run(opts, client):
    cmd = opts.command
    if cmd in STATE_COMMANDS or cmd == 'spawn':
        method, args = request_of(opts, client)
        uuid = (args.get('instance') or {}).get('uuid')
        if not opts.wait:
            show(opts, client.call_args(method, args))
            return EXIT_OK
        watcher = client.open_watch(uuid)
        try:
            client.cast(method, **args)
            return wait_for_settle(opts, watcher, uuid)
        finally:
            watcher.stop()
    if cmd == 'watch':
        return watch(opts, client)
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
    return EXIT_OK


def _main(argv):
    import amqp
    import kombu.exceptions

    opts = build_parser().parse_args(argv)
    conf, url = load_conf(opts)
    try:
        if opts.command == 'dead-letters':
            return run_dead_letters(opts, conf, url)
        with make_client(opts, conf, url) as client:
            return run(opts, client)
    except BrokenPipeError:
        raise       # our stdout's reader left (``| head``): not the broker
    except (OSError, amqp.exceptions.ConnectionError,
            amqp.exceptions.AccessRefused,
            kombu.exceptions.OperationalError) as e:
        raise Failure('broker unreachable at %s: %s' % (
            _where(url), _one_line(e)), EXIT_BROKER) from None
    except amqp.exceptions.ChannelError as e:
        raise Failure('the broker refused: %s' % _one_line(e),
                      EXIT_BROKER) from None


def _where(url):
    """The broker hosts of a URL, without credentials."""
    return ', '.join('%s:%s' % (h.hostname, h.port)
                     for h in transport.parse_url(url).hosts)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # The library's warnings (reconnect attempts...) are not for this
    # command's user: the one error line says what failed.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of our output stopped early (``| grep -q``): it has
        # what it wanted; a traceback or an error line would be noise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Failure as e:
        error = str(e)
        code = e.code
    except client_mod.RemoteError as e:
        error, code = '%s: %s' % (e.exc_type, _one_line(e.value)), EXIT_REMOTE
    except client_mod.Timeout as e:
        error, code = str(e), EXIT_TIMEOUT
    except client_mod.Unroutable as e:
        error, code = '%s: is the agent running?' % e, EXIT_NO_AGENT
    except KeyboardInterrupt:
        error, code = 'interrupted', 130
    print('error: %s' % error, file=sys.stderr)
    return code


if __name__ == '__main__':
    sys.exit(main())
