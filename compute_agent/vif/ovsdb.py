"""A thin ``ovs-vsctl`` wrapper (argument lists, ``--timeout``, no shell).

Why not ``ovsdbapp``/``ovs`` from PyPI: the agent issues two or three
commands per VIF, where a 5-10 ms ``ovs-vsctl`` run is negligible, and
``ovs-vsctl`` is installed with ``openvswitch-switch`` at the exact version of
the running daemons. ``ovsdbapp`` would add the ``ovs`` package (a C
extension build), a background connection thread and schema handling for no
gain here. ``ovs-vsctl`` also waits for ovs-vswitchd to apply each change,
so a bridge's ``ofport`` can be read right after ``add-br``.

Trap (NOTES.md): ``ovs-vsctl add-br``/``add-port`` exit 0 even when
ovs-vswitchd could not open the device (no kernel datapath, missing tap), so
bridge creation is verified by reading the bridge interface's ``ofport``.
"""

import json
import subprocess

OVS_VSCTL = 'ovs-vsctl'


class OvsError(Exception):
    """An ovs-vsctl command failed; ``stderr`` holds its message."""

    def __init__(self, message, returncode=None, stderr=''):
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(message)


class OvsVsctl:
    def __init__(self, timeout=120, db=None, binary=OVS_VSCTL):
        self.timeout = int(timeout)
        self.db = db
        self.binary = binary

    def argv(self, args):
        argv = [self.binary, '--timeout=%d' % self.timeout]
        if self.db:
            argv.append('--db=%s' % self.db)
        return argv + list(args)

    def run(self, *args, ok_codes=(0,)):
        """Run one ovs-vsctl command line; return (returncode, stdout)."""
        argv = self.argv(args)
        try:
            proc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, check=False,
                timeout=self.timeout + 10)
        except FileNotFoundError:
            raise OvsError('%s not found (package openvswitch-switch)'
                           % self.binary) from None
        except subprocess.TimeoutExpired:
            raise OvsError('%s timed out after %ss (is ovs-vswitchd running?)'
                           % (' '.join(argv), self.timeout + 10)) from None
        if proc.returncode not in ok_codes:
            err = proc.stderr.strip()
            raise OvsError('%s failed (exit %s): %s' % (
                ' '.join(argv), proc.returncode, err or '(no message)'),
                returncode=proc.returncode, stderr=err)
        return proc.returncode, proc.stdout

    # -- bridges --------------------------------------------------------------

    def br_exists(self, bridge):
        rc, _ = self.run('br-exists', bridge, ok_codes=(0, 2))
        return rc == 0

    def add_bridge(self, bridge, datapath_type):
        self.run('--may-exist', 'add-br', bridge, '--',
                 'set', 'Bridge', bridge, 'datapath_type=%s' % datapath_type)

    def del_bridge(self, bridge):
        self.run('--if-exists', 'del-br', bridge)

    def interface_state(self, iface):
        """{'ofport': int or None, 'error': str or None}, or None if absent.

        ``ofport`` -1 or None means ovs-vswitchd could not open the device.
        """
        rc, out = self.run('--if-exists', '--format=json', '--columns=ofport,error',
                           'list', 'Interface', iface)
        return _first_row(out, ('ofport', 'error'))

    # -- ports ----------------------------------------------------------------

    def add_port(self, bridge, port, external_ids=None):
        args = ['--may-exist', 'add-port', bridge, port]
        if external_ids:
            args += ['--', 'set', 'Interface', port] + _ids(external_ids)
        self.run(*args)

    def set_external_ids(self, iface, external_ids):
        """Set keys of an Interface's external_ids; False if it does not exist."""
        if not self.interface_exists(iface):
            return False
        self.run('--if-exists', 'set', 'Interface', iface, *_ids(external_ids))
        return True

    def interface_exists(self, iface):
        return self.interface_state(iface) is not None

    def external_ids(self, iface):
        rc, out = self.run('--if-exists', '--format=json', '--columns=external_ids',
                           'list', 'Interface', iface)
        row = _first_row(out, ('external_ids',))
        return row['external_ids'] if row else None

    def port_to_bridge(self, port):
        rc, out = self.run('port-to-br', port, ok_codes=(0, 1))
        name = out.strip() if rc == 0 else ''
        return name or None

    def list_ports(self, bridge):
        _, out = self.run('list-ports', bridge)
        return out.split()

    def del_port(self, port, bridge=None):
        args = ['--if-exists', 'del-port']
        if bridge:
            args.append(bridge)
        self.run(*args, port)


def _ids(external_ids):
    # ovs-vsctl parses the value as an OVSDB atom: quote it as a JSON string
    # so ':' (a MAC address) and other punctuation survive.
    return ['external_ids:%s=%s' % (k, json.dumps(str(v)))
            for k, v in sorted(external_ids.items())]


def _value(datum):
    """An OVSDB JSON datum as Python: sets, maps and atoms."""
    if isinstance(datum, list) and len(datum) == 2 and datum[0] in ('set', 'map', 'uuid'):
        kind, body = datum
        if kind == 'set':
            values = [_value(v) for v in body]
            return values[0] if len(values) == 1 else (values or None)
        if kind == 'map':
            return {_value(k): _value(v) for k, v in body}
        return body
    return datum


def _first_row(out, columns):
    if not out.strip():
        return None
    data = json.loads(out)
    rows = data.get('data') or []
    if not rows:
        return None
    headings = data.get('headings') or list(columns)
    row = {h: _value(v) for h, v in zip(headings, rows[0])}
    if 'external_ids' in row and row['external_ids'] is None:
        row['external_ids'] = {}
    return row
