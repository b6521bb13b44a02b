"""A second compute host on this machine, for migration tests.

``SecondHost`` is a network namespace joined to the machine by a veth pair
(a private /24 of its own, 10.93.N.0/24), with its own libvirtd and virtlogd
running there in a private mount namespace (tmpfs over ``/run/libvirt``,
``/var/lib/libvirt``, ``/var/cache/libvirt``, ``/var/log/libvirt``, a copy of
``/etc/libvirt`` without host 1's domains, its own ``host_uuid``, libvirtd
listening on TCP at the namespace's veth address, own pid files, under
tini), as ../shared/NOTES.md measured it. Agents of that host
(``start_agent``) run inside the network namespace, so their bridges and
taps live where that libvirtd's QEMU runs; they reach RabbitMQ on the
machine's side of the veth with a broker user made for this fixture
(RabbitMQ's ``guest`` only logs in over loopback).

Host 1 is the machine's libvirtd and an agent started as ``agent_fixture``
does. ``migration_agents`` (module scope) yields both hosts and their
agents; everything (agents, daemons, mounts, namespace, veth, broker user)
is removed at teardown. ``both_alive()`` checks the two libvirtds before a
test blames an agent. ``kill_libvirtd``/``restart_libvirtd`` crash host 2's
libvirtd and start it again in the namespaces its guests and virtlogd keep.
``run_two_namespace_hosts`` makes host 1 a SecondHost too (linked to host 2
by a veth pair of their own), for tests that kill either libvirtd.
"""

import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid as uuidlib

import libvirt

try:
    from tests.functional.agent_fixture import (
        AgentEnv, open_libvirt, require_services, wait_until)
    from tests.functional.guest_fixture import WORK_ROOT, skip_or_fail
    from tests.functional.rpc_fixtures import broker_url
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_fixture import AgentEnv, open_libvirt, require_services, wait_until
    from guest_fixture import WORK_ROOT, skip_or_fail
    from rpc_fixtures import broker_url

from compute_agent import pause_points

SUBNET_PREFIX = '10.93'     # no other test uses 10.93.0.0/16
DAEMON_TIMEOUT = 30
# The mount namespace's script: private libvirt directories, then the daemons.
NS_SCRIPT = r'''#!/bin/bash
set -euo pipefail
root=$1
for d in /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
    mkdir -p "$d"
    mount -t tmpfs -o mode=0755 ca-mig "$d"
done
mkdir -p /var/lib/libvirt/qemu
for d in save snapshot dump channel/target nvram ram checkpoint; do
    mkdir -p "/var/lib/libvirt/qemu/$d"
done
chown -R libvirt-qemu:libvirt-qemu /var/lib/libvirt/qemu
chmod -R 750 /var/lib/libvirt/qemu
mount --bind "$root/etc-libvirt" /etc/libvirt
virtlogd -d -p "$root/virtlogd.pid"
exec tini -s -- libvirtd -l -p "$root/libvirtd.pid"
'''


def _run(*cmd, check=True, timeout=60):
    return subprocess.run(list(cmd), check=check, timeout=timeout,
                          capture_output=True, text=True)


def _free_subnet():
    used = _run('ip', '-o', '-4', 'addr', 'show').stdout
    for _ in range(50):
        n = secrets.randbelow(250) + 1
        if f' {SUBNET_PREFIX}.{n}.' not in used:
            return f'{SUBNET_PREFIX}.{n}'
    raise RuntimeError('no free 10.93.N.0/24')


class SecondHost:
    """The namespace, its veth pair, its libvirtd and its broker user."""

    def __init__(self, tag=None):
        self.tag = tag or secrets.token_hex(3)
        self.netns = f'camig-{self.tag}'
        self.veth_host = f'cmh{self.tag}'
        self.veth_ns = f'cmn{self.tag}'
        net = _free_subnet()
        self.host_ip, self.ns_ip = f'{net}.1', f'{net}.2'
        self.libvirt_uri = f'qemu+tcp://{self.ns_ip}/system'
        self.broker_user = f'ca-mig-{self.tag}'
        self.broker_password = secrets.token_hex(16)
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        self.root = WORK_ROOT / f'second-host-{self.tag}'
        self.proc = None
        self._cleanup = []      # undo steps, run last-first at teardown

    # -- setup --------------------------------------------------------------------

    def start(self):
        try:
            self._network()
            self._broker_user()
            self._libvirtd()
        except BaseException:
            self.teardown()
            raise
        return self

    def _network(self):
        _run('ip', 'netns', 'add', self.netns)
        self._cleanup.append(lambda: _run('ip', 'netns', 'del', self.netns,
                                          check=False))
        _run('ip', 'link', 'add', self.veth_host, 'type', 'veth', 'peer',
             'name', self.veth_ns)
        self._cleanup.append(lambda: _run('ip', 'link', 'del', self.veth_host,
                                          check=False))
        _run('ip', 'link', 'set', self.veth_ns, 'netns', self.netns)
        _run('ip', 'addr', 'add', f'{self.host_ip}/24', 'dev', self.veth_host)
        _run('ip', 'link', 'set', self.veth_host, 'up')
        inside = ('ip', 'netns', 'exec', self.netns)
        _run(*inside, 'ip', 'addr', 'add', f'{self.ns_ip}/24', 'dev', self.veth_ns)
        _run(*inside, 'ip', 'link', 'set', self.veth_ns, 'up')
        _run(*inside, 'ip', 'link', 'set', 'lo', 'up')

    def _broker_user(self):
        ctl = ('rabbitmqctl', '-q')
        _run(*ctl, 'add_user', self.broker_user, self.broker_password)
        self._cleanup.append(lambda: _run(*ctl, 'delete_user', self.broker_user,
                                          check=False))
        _run(*ctl, 'set_permissions', '-p', '/', self.broker_user,
             '.*', '.*', '.*')

    @property
    def transport_url(self):
        """The broker as agents inside the namespace reach it."""
        return (f'rabbit://{self.broker_user}:{self.broker_password}@'
                f'{self.host_ip}:5672/')

    def _libvirtd(self):
        self.root.mkdir(mode=0o755)
        self._cleanup.append(lambda: shutil.rmtree(self.root, ignore_errors=True))
        etc = self.root / 'etc-libvirt'
        # Host 1's domains, networks and secrets stay out of host 2.
        shutil.copytree('/etc/libvirt', etc, symlinks=True,
                        ignore=lambda d, names: names if os.path.basename(d) in
                        ('qemu', 'secrets') else ())
        sock_dir = self.root / 'sock'
        sock_dir.mkdir()
        with open(etc / 'libvirtd.conf', 'a') as f:
            f.write(f'\nhost_uuid = "{uuidlib.uuid4()}"\nlisten_tls = 0\n'
                    f'listen_tcp = 1\nlisten_addr = "{self.ns_ip}"\n'
                    f'auth_tcp = "none"\nunix_sock_dir = "{sock_dir}"\n')
        script = self.root / 'ns-start.sh'
        script.write_text(NS_SCRIPT)
        script.chmod(0o755)
        self.log_file = self.root / 'libvirtd.log'
        with open(self.log_file, 'wb') as log:
            self.proc = subprocess.Popen(
                ['ip', 'netns', 'exec', self.netns, 'unshare', '-m',
                 '--propagation', 'private', str(script), str(self.root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._cleanup.append(self._stop_daemons)
        wait_until(self._answers, DAEMON_TIMEOUT,
                   f'the second libvirtd at {self.libvirt_uri}', interval=0.2)

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError('the second libvirtd exited with %s:\n%s' % (
                self.proc.returncode, self.log_file.read_text(errors='replace')))
        try:
            open_libvirt(self.libvirt_uri).close()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def _stop_daemons(self):
        """Every guest of host 2, then libvirtd (tini's child) and virtlogd,
        by their own pid files."""
        try:
            conn = self.open()
            try:
                for dom in conn.listAllDomains(0):
                    try:
                        if dom.isActive():
                            dom.destroy()
                        dom.undefine()
                    except Exception as exc:  # noqa: BLE001 - go on
                        print(f'second host: cannot remove {dom.name()}: {exc}')
            finally:
                conn.close()
        except Exception:  # noqa: BLE001 - libvirtd is gone already
            pass
        for name in ('libvirtd', 'virtlogd'):
            try:
                pid = int((self.root / f'{name}.pid').read_text())
                os.kill(pid, signal.SIGTERM)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                pass
        if self.proc is not None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        deadline = time.monotonic() + 10
        while self._pid_alive('virtlogd') and time.monotonic() < deadline:
            time.sleep(0.1)

    def _pid_alive(self, name):
        try:
            os.kill(int((self.root / f'{name}.pid').read_text()), 0)
            return True
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False

    # -- a crash of this host's libvirtd -----------------------------------------------

    def kill_libvirtd(self):
        """SIGKILL of host 2's libvirtd. Its QEMU processes and virtlogd live
        on, and with them the mount namespace they run in."""
        os.kill(int((self.root / 'libvirtd.pid').read_text()), signal.SIGKILL)
        self.proc.wait(20)          # tini goes with its child

    def restart_libvirtd(self):
        """libvirtd again, in the namespaces virtlogd (and the guests) kept
        (nsenter), under tini as at start; it reconnects to its QEMUs."""
        keeper = int((self.root / 'virtlogd.pid').read_text())
        with open(self.log_file, 'ab') as log:
            self.proc = subprocess.Popen(
                ['nsenter', '-t', str(keeper), '-m', '-n', '--', 'tini', '-s',
                 '--', 'libvirtd', '-l', '-p', str(self.root / 'libvirtd.pid')],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_until(self._answers, DAEMON_TIMEOUT,
                   f'the restarted libvirtd at {self.libvirt_uri}', interval=0.2)

    # -- checks ---------------------------------------------------------------------

    def alive(self):
        """The second libvirtd answers."""
        try:
            return self._answers()
        except AssertionError:
            return False

    def open(self):
        return open_libvirt(self.libvirt_uri)

    # -- agents -----------------------------------------------------------------------

    def start_agent(self, test_guest, peer, label, instances_path=None,
                    config=None):
        """A real agent of this host in the namespace, on ``peer``'s topic,
        exchange and state topic, with its own host name, journal and state
        dir; ``instances_path`` defaults to its own (not shared); ``config``:
        more options (section -> values)."""
        env = AgentEnv(test_guest, label=label, peer=peer,
                       command_prefix=['ip', 'netns', 'exec', self.netns])
        try:
            env.base_config = {
                'DEFAULT': {'transport_url': self.transport_url,
                            'my_ip': self.ns_ip},
                'libvirt': {'connection_uri': self.libvirt_uri},
            }
            for section, values in (config or {}).items():
                env.base_config.setdefault(section, {}).update(values)
            if instances_path is not None:
                env.instances_path = instances_path
                env.base_config['DEFAULT']['instances_path'] = instances_path
            env.libvirt_uri = self.libvirt_uri
            env.write_config()
            env.start()
        except BaseException:
            print(env.log_tail())
            env.teardown()
            raise
        return env

    # -- teardown ----------------------------------------------------------------------

    def teardown(self):
        while self._cleanup:
            step = self._cleanup.pop()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - go on removing the rest
                print(f'second host teardown step failed: {exc}')


def both_alive(second):
    """Both libvirtds answer: check before blaming an agent."""
    try:
        open_libvirt().close()
        first = True
    except Exception:  # noqa: BLE001
        first = False
    return first and second.alive()


def require_second_host():
    require_services(broker_url())
    for tool in ('tini', 'rabbitmqctl', 'unshare'):
        if shutil.which(tool) is None:
            skip_or_fail(f'{tool} is missing (tools/install-system-packages.sh)')


class TwoHosts:
    """Host 1 (the machine's libvirtd and an agent) and host 2 (a
    SecondHost and its agents): ``.agent1``, ``.second``, ``.agent2``
    (instances_path of its own: block migration) and ``.agent2_shared``
    (host 1's instances_path: shared-storage migration)."""

    def __init__(self, agent1, second, agent2, agent2_shared):
        self.agent1, self.second = agent1, second
        self.agent2, self.agent2_shared = agent2, agent2_shared
        # A bridge name free on both hosts (each agent creates it on plug;
        # host 2's goes with its namespace).
        self.bridge = agent1.fresh_link('cabm')

    def alive(self):
        return both_alive(self.second)

    def libvirts(self):
        """(name, opener) of each host's libvirt, for ``running_copies``."""
        return (('host1', open_libvirt), ('host2', self.second.open))


def run_two_hosts(test_guest, label, prepare1=None):
    """For a module fixture (``yield from``): TwoHosts, torn down after.
    ``prepare1(env)``: more setup of host 1's agent before it starts."""
    try:
        from tests.functional.agent_fixture import run_agent
    except ImportError:
        from agent_fixture import run_agent
    require_second_host()
    second = SecondHost().start()
    agents = []
    try:
        def prepare(env):
            env.base_config = {'DEFAULT': {'my_ip': second.host_ip},
                               'libvirt': {'live_migration_peer_timeout': 5}}
            env.write_config()
            if prepare1 is not None:
                prepare1(env)
        gen = run_agent(test_guest, label, prepare)
        agent1 = next(gen)
        agents.append(('gen', gen))
        agent2 = second.start_agent(test_guest, agent1, label + '2')
        agents.append(('env', agent2))
        agent2s = second.start_agent(test_guest, agent1, label + '2s',
                                     instances_path=agent1.instances_path)
        agents.append(('env', agent2s))
        yield TwoHosts(agent1, second, agent2, agent2s)
    finally:
        problems = []
        for kind, item in reversed(agents):
            if kind == 'env':
                problems += item.teardown()
            else:
                try:
                    next(item)
                except StopIteration:
                    pass
                except AssertionError as exc:
                    problems.append(str(exc))
        second.teardown()
        assert not problems, '\n'.join(problems)


# -- both hosts in namespaces (kills of either libvirtd: the machine's own is
# shared with other tests and never killed) ------------------------------------

def link_namespaces(a, b):
    """A veth pair between two SecondHosts' namespaces with a route to the
    other's address each way: their libvirtds and QEMUs reach each other
    (the machine does not forward between the veth subnets)."""
    end_a, end_b = f'cml{a.tag}', f'cml{b.tag}'
    _run('ip', 'link', 'add', end_a, 'netns', a.netns, 'type', 'veth',
         'peer', 'name', end_b, 'netns', b.netns)
    a._cleanup.append(lambda: _run('ip', 'netns', 'exec', a.netns, 'ip',
                                   'link', 'del', end_a, check=False))
    for host, end, other in ((a, end_a, b), (b, end_b, a)):
        inside = ('ip', 'netns', 'exec', host.netns)
        _run(*inside, 'ip', 'link', 'set', end, 'up')
        _run(*inside, 'ip', 'route', 'add', f'{other.ns_ip}/32', 'dev', end,
             'src', host.ns_ip)


class NamespaceHosts(TwoHosts):
    """Two SecondHosts, each with its libvirtd and one agent: ``.first`` and
    ``.agent1`` (host 1), ``.second`` and ``.agent2`` (host 2), own
    instances_path each (block migration). ``.hosts``: (agent, SecondHost)
    pairs, for tests that migrate either way."""

    def __init__(self, first, agent1, second, agent2):
        super().__init__(agent1, second, agent2, None)
        self.first = first
        self.hosts = [(agent1, first), (agent2, second)]

    def alive(self):
        return self.first.alive() and self.second.alive()

    def libvirts(self):
        return (('host1', self.first.open), ('host2', self.second.open))

    def name(self, pair):
        """``pair``'s name in ``running_copies``: 'host1' or 'host2'."""
        return ('host1', 'host2')[self.hosts.index(pair)]

    def pair(self, name):
        return self.hosts[('host1', 'host2').index(name)]


def run_two_namespace_hosts(test_guest, label, config=None):
    """For a module fixture (``yield from``): NamespaceHosts, torn down
    after. ``config``: options of both agents (section -> values)."""
    require_second_host()
    made, agents = [], []
    try:
        made.append(SecondHost().start())
        made.append(SecondHost().start())
        first, second = made
        link_namespaces(first, second)
        agents.append(first.start_agent(test_guest, None, label + '1',
                                        config=config))
        agents.append(second.start_agent(test_guest, agents[0], label + '2',
                                         config=config))
        yield NamespaceHosts(first, agents[0], second, agents[1])
    finally:
        problems = []
        for env in reversed(agents):
            problems += env.teardown()
        for host in reversed(made):
            host.teardown()
        assert not problems, '\n'.join(problems)


def running_copies(hosts, uuid):
    """The names ('host1', 'host2') of the hosts whose libvirt runs a
    domain of ``uuid``."""
    found = []
    for name, opener in hosts.libvirts():
        conn = opener()
        try:
            try:
                if conn.lookupByUUIDString(uuid).isActive():
                    found.append(name)
            except libvirt.libvirtError:
                pass
        finally:
            conn.close()
    return found


# -- pause points (compute_agent/pause_points.py) for the crash tests -----------

def with_pause_points(tmp_path_factory, run, *args):
    """For a module fixture (``yield from``): the hosts ``run(*args)``
    yields, whose agents pause at the gates made in ``hosts.pauses``."""
    pauses = tmp_path_factory.mktemp('pauses')
    pauses.chmod(0o777)
    old = os.environ.get(pause_points.ENV)
    os.environ[pause_points.ENV] = str(pauses)     # inherited by the agents
    try:
        for hosts in run(*args):
            hosts.pauses = pauses
            yield hosts
    finally:
        if old is None:
            os.environ.pop(pause_points.ENV, None)
        else:
            os.environ[pause_points.ENV] = old


def close_gate(hosts, point):
    """An agent reaching ``point`` waits there until ``open_gate``."""
    gate = hosts.pauses / point
    gate.touch()
    return gate


def wait_gate(gate, timeout, what):
    """Until an agent waits at ``gate``."""
    reached = gate.with_name(gate.name + '.reached')
    wait_until(reached.exists, timeout, what, interval=0.1)


def open_gate(gate):
    gate.with_name(gate.name + '.reached').unlink(missing_ok=True)
    gate.unlink(missing_ok=True)


def crash_at_gate(hosts, gate, kill, restart):
    """``kill()`` while an agent waits at ``gate``, let it go on, then
    ``restart()``: both libvirtds answer after."""
    try:
        kill()
    finally:
        open_gate(gate)
    restart()
    assert hosts.alive()
