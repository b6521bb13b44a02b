"""The guest-agent mechanism (virt/guest_agent.py) and its manager side.

The commands' deadline, their cancellation by a destroy and ``quiesced()``
run against a fake libvirt domain whose calls block on events: a guest
agent that never answers cannot be had from ``test:///default`` (it has no
guest agent at all), and the real one is in
tests/functional/test_e2e_guest_agent.py. ``set_admin_password`` runs on the
real Manager and LibvirtDriver on ``test:///default``, whose domains have
no guest agent.
"""

import logging
import threading

import libvirt
import pytest

from compute_agent import exception
from compute_agent.virt import connection
from compute_agent.virt import guest
from compute_agent.virt import guest_agent

try:
    from tests.unit import builder_fixtures as bf
    from tests.unit import manager_fixtures as mf
except ImportError:
    import builder_fixtures as bf
    import manager_fixtures as mf

UUID = '6f1b1c1e-1111-4222-8333-444455556666'
OTHER = '6f1b1c1e-1111-4222-8333-777777777777'
NAME = 'inst-ga'


class FakeDomain:
    """Calls block while ``hang`` names them; ``fail`` makes them raise."""

    def __init__(self):
        self.hang = set()
        self.fail = {}
        self.calls = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.frozen = False

    def _call(self, name, result=0):
        self.calls.append(name)
        if name in self.hang:
            self.started.set()
            self.release.wait(30)
        if name in self.fail:
            raise self.fail[name]
        return result

    def agentSetResponseTimeout(self, timeout, flags):
        self.calls.append(('timeout', timeout))

    def fsFreeze(self, mounts, flags):
        result = self._call('freeze', 1)
        self.frozen = True
        return result

    def fsThaw(self, mounts, flags):
        result = self._call('thaw', 1 if self.frozen else 0)
        self.frozen = False
        return result

    def setUserPassword(self, user, password, flags):
        return self._call('password')

    def interfaceAddresses(self, source, flags):
        return self._call('addresses', {
            'lo': {'hwaddr': '00:00:00:00:00:00',
                   'addrs': [{'type': 0, 'addr': '127.0.0.1', 'prefix': 8}]},
            'eth0': {'hwaddr': 'fa:16:3e:00:00:01',
                     'addrs': [{'type': 0, 'addr': '10.0.0.5', 'prefix': 24},
                               {'type': 1, 'addr': 'fe80::1', 'prefix': 64}]}})


class FakeConnection:
    def __init__(self, domains):
        self.domains = domains
        self.opened = 0

    def dedicated(self, fn):
        self.opened += 1
        return fn(self)

    def lookupByUUIDString(self, uuid):
        if uuid not in self.domains:
            err = libvirt.libvirtError('no domain')
            err.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, 'no domain', 0, '', '',
                       '', 0, 0)
            raise err
        return self.domains[uuid]


def agent_error(message='QEMU guest agent is not connected'):
    err = libvirt.libvirtError(message)
    err.err = (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, 0, message, 0, '', '', '',
               0, 0)
    return err


@pytest.fixture
def env(tmp_path):
    conf = bf.make_conf('qemu', {'libvirt.guest_agent_timeout': 1,
                                 'instances_path': str(tmp_path)})
    (tmp_path / NAME).mkdir()
    dom, other = FakeDomain(), FakeDomain()
    conn = FakeConnection({UUID: dom, OTHER: other})
    agent = guest_agent.GuestAgent(conf, conn)
    # ping goes through libvirt_qemu: answered by the fake domain too
    agent._agent_command = lambda uuid, what, command, timeout=None: agent._run(
        uuid, what, lambda dom, _deadline: dom._call('ping', {}), timeout)
    yield agent, dom, other, tmp_path
    dom.release.set()
    other.release.set()


def mark(tmp_path):
    return tmp_path / NAME / guest_agent.FROZEN_MARK


# -- deadlines and cancellation --------------------------------------------------------

def test_a_command_that_never_answers_fails_after_its_deadline(env):
    agent, dom, _, _ = env
    dom.hang.add('freeze')
    with pytest.raises(exception.GuestAgentUnavailable) as info:
        agent.freeze(UUID)
    assert 'no answer within 1 s' in info.value.message
    assert ('timeout', 1) in dom.calls      # libvirt's own deadline is set too


def test_a_hung_guest_blocks_no_other_guest(env):
    agent, dom, other, _ = env
    dom.hang.add('freeze')
    worker = threading.Thread(target=lambda: pytest.raises(
        exception.GuestAgentUnavailable, agent.freeze, UUID))
    worker.start()
    assert dom.started.wait(10)
    assert agent.freeze(OTHER) == 1         # while the first one still hangs
    worker.join(10)


def test_a_destroy_cancels_the_waiting_command(env):
    agent, dom, _, _ = env
    agent.conf.set_override('guest_agent_timeout', 60, 'libvirt')
    dom.hang.add('password')
    outcome = {}

    def run():
        try:
            agent.set_user_password(UUID, 'root', 'secret')
        except exception.GuestAgentUnavailable as e:
            outcome['error'] = e
    worker = threading.Thread(target=run)
    worker.start()
    assert dom.started.wait(10)
    agent.doom(UUID)
    worker.join(10)
    assert not worker.is_alive()
    assert 'being destroyed' in outcome['error'].message
    # Until that destroy has run, new commands are refused at once ...
    with pytest.raises(exception.GuestAgentUnavailable):
        agent.ping(UUID)
    agent.undoom(UUID)
    dom.hang.clear()
    assert agent.ping(UUID) is True         # ... and then run again


def test_doom_counts_queued_destroys(env):
    agent, _, _, _ = env
    agent.doom(UUID)
    agent.doom(UUID)
    agent.undoom(UUID)
    assert agent.doomed(UUID)
    agent.undoom(UUID)
    agent.undoom(UUID)                      # never below zero
    assert not agent.doomed(UUID)


def test_libvirt_errors_are_guest_agent_unavailable(env):
    agent, dom, _, _ = env
    dom.fail['password'] = agent_error()
    with pytest.raises(exception.GuestAgentUnavailable) as info:
        agent.set_user_password(UUID, 'root', 'hunter2-secret')
    assert 'not connected' in info.value.message
    assert 'hunter2-secret' not in info.value.message


def test_no_domain_is_instance_not_found(env):
    agent, _, _, _ = env
    with pytest.raises(exception.InstanceNotFound):
        agent.freeze('6f1b1c1e-1111-4222-8333-000000000000')


def test_addresses_leave_loopback_and_link_local_out(env):
    agent, _, _, _ = env
    assert agent.addresses(UUID) == [
        {'name': 'eth0', 'mac': 'fa:16:3e:00:00:01', 'ips': ['10.0.0.5']}]


def test_each_command_has_its_own_connection(env):
    agent, _, _, _ = env
    before = agent.connection.opened
    agent.freeze(UUID)
    agent.thaw(UUID)
    assert agent.connection.opened == before + 2


def test_dedicated_connection_is_not_a_pooled_one():
    conf = bf.make_conf('qemu', {'libvirt.connection_uri': 'test:///default'})
    conn = connection.Connection(conf)
    try:
        primary = conn.get()
        seen = conn.dedicated(lambda c: (c, c.getLibVersion()))
        assert seen[0] is not primary
        assert all(s.busy == 0 for s in conn._slots)
    finally:
        conn.close()
    with pytest.raises(exception.HypervisorUnavailable):
        conn.dedicated(lambda c: None)


# -- quiesced ------------------------------------------------------------------------

def test_quiesce_true_freezes_and_thaws(env, caplog):
    agent, dom, _, tmp_path = env
    caplog.set_level(logging.INFO, logger='compute_agent.virt.guest_agent')
    with guest_agent.quiesced(agent, NAME, UUID, True) as frozen:
        assert frozen is True and dom.frozen
        assert mark(tmp_path).exists()
    assert not dom.frozen and not mark(tmp_path).exists()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any('frozen' in m and UUID in m for m in infos)
    assert any('thawed' in m and UUID in m for m in infos)


def test_quiesced_takes_the_driver_too(env):
    agent, dom, _, _ = env

    class Driver:
        guest_agent = agent
    with guest_agent.quiesced(Driver(), NAME, UUID, True) as frozen:
        assert frozen and dom.frozen
    assert not dom.frozen


def test_quiesce_true_without_agent_raises_and_thaws(env):
    agent, dom, _, tmp_path = env
    dom.fail['freeze'] = agent_error()
    with pytest.raises(exception.GuestAgentUnavailable):
        with guest_agent.quiesced(agent, NAME, UUID, True):
            pytest.fail('the body must not run')
    assert dom.calls.count('thaw') == 1
    assert not mark(tmp_path).exists()


def test_quiesce_none_without_answer_goes_on_unfrozen(env):
    agent, dom, _, tmp_path = env
    dom.fail['ping'] = agent_error()
    with guest_agent.quiesced(agent, NAME, UUID, None) as frozen:
        assert frozen is False
    assert 'freeze' not in dom.calls and 'thaw' not in dom.calls
    assert not mark(tmp_path).exists()


def test_quiesce_none_with_a_hung_freeze_goes_on_unfrozen_then_thaws(env):
    agent, dom, _, _ = env
    dom.hang.add('freeze')
    with guest_agent.quiesced(agent, NAME, UUID, None) as frozen:
        assert frozen is False
    assert 'thaw' in dom.calls


def test_quiesce_none_cancelled_by_destroy_raises(env):
    agent, dom, _, _ = env
    agent.doom(UUID)
    with pytest.raises(exception.GuestAgentUnavailable) as info:
        with guest_agent.quiesced(agent, NAME, UUID, None):
            pytest.fail('no snapshot of a guest being destroyed')
    assert 'being destroyed' in info.value.message
    assert 'freeze' not in dom.calls


def test_quiesce_false_touches_nothing(env):
    agent, dom, _, tmp_path = env
    with guest_agent.quiesced(agent, NAME, UUID, False) as frozen:
        assert frozen is False
    assert dom.calls == [] and not mark(tmp_path).exists()


def test_body_failure_thaws(env):
    agent, dom, _, tmp_path = env
    with pytest.raises(RuntimeError):
        with guest_agent.quiesced(agent, NAME, UUID, True):
            raise RuntimeError('upload failed')
    assert not dom.frozen and not mark(tmp_path).exists()


def test_failed_thaw_keeps_the_mark_and_a_later_probe_thaws(env):
    agent, dom, _, tmp_path = env
    dom.fail['thaw'] = agent_error('guest agent went away')
    with guest_agent.quiesced(agent, NAME, UUID, True):
        pass
    assert dom.frozen and mark(tmp_path).exists()
    del dom.fail['thaw']
    assert agent.thaw_leftover(NAME, UUID) is True
    assert not dom.frozen and not mark(tmp_path).exists()
    assert agent.thaw_leftover(NAME, UUID) is False     # nothing left to do


def test_no_leftover_thaw_while_a_quiesce_holds_the_guest(env):
    agent, dom, _, tmp_path = env
    with guest_agent.quiesced(agent, NAME, UUID, True):
        assert agent.thaw_leftover(NAME, UUID) is False
        assert dom.frozen
    assert not dom.frozen


# -- the manager side -------------------------------------------------------------------

h = mf.h     # the plain harness fixture


def test_set_admin_password_without_guest_agent_keeps_states(h):
    instance, record = h.spawn()
    uuid = instance['uuid']
    with pytest.raises(exception.GuestAgentUnavailable):
        h.call('set_admin_password', instance_uuid=uuid,
               admin_password='hunter2-secret')
    info = h.info(uuid)
    assert (info['vm_state'], info['task_state'], info['power_state']) == (
        record['vm_state'], None, record['power_state'])
    assert info['error']['class'] == 'GuestAgentUnavailable'
    assert info['guest_agent'] is False
    events = [r['event'] for r in h.notifier.reports
              if r['instance_uuid'] == uuid]
    assert events[-2:] == ['set_admin_password.start', 'set_admin_password.error']
    assert 'hunter2-secret' not in repr(h.notifier.reports)


def test_set_admin_password_needs_an_active_guest(h):
    instance, _ = h.spawn()
    h.call('power_off', instance=instance, timeout=0)
    with pytest.raises(exception.InstanceInvalidState):
        h.call('set_admin_password', instance_uuid=instance['uuid'],
               admin_password='x')


def test_set_admin_password_success_marks_the_guest_agent(h, monkeypatch):
    instance, _ = h.spawn()
    seen = {}
    monkeypatch.setattr(h.driver.guest_agent, 'set_user_password',
                        lambda uuid, user, password: seen.update(
                            uuid=uuid, user=user, password=password))
    out = h.call('set_admin_password', instance_uuid=instance['uuid'],
                 admin_password='n3w', user='admin')
    assert seen == {'uuid': instance['uuid'], 'user': 'admin', 'password': 'n3w'}
    assert (out['vm_state'], out['task_state']) == ('active', None)
    assert out['guest_agent'] is True
    assert h.info(instance['uuid'])['guest_agent'] is True


def test_a_destroy_key_dooms_the_guest_until_it_ran(h):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    valid = h.manager.validate('destroy', {'instance': {'uuid': uuid}}, '1.0')
    assert h.manager.key('destroy', valid) == uuid
    assert h.driver.guest_agent.doomed(uuid)
    h.manager.dispatch('destroy', valid, mf.context())
    assert not h.driver.guest_agent.doomed(uuid)


def test_agent_events_set_and_reset_the_record(h):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    h.manager._ga_update(uuid, guest_agent=True,
                         guest_addresses=[{'name': 'eth0', 'mac': None,
                                           'ips': ['10.0.0.5']}])
    info = h.info(uuid)
    assert info['guest_agent'] is True
    assert info['guest_addresses'][0]['ips'] == ['10.0.0.5']
    h.manager.on_guest_agent_event(uuid, False, True)    # the guest started
    info = h.info(uuid)
    assert info['guest_agent'] is False and info['guest_addresses'] is None


def test_a_connected_guest_agent_is_probed_off_the_request_path(h, monkeypatch):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    asked = []

    class Agent:
        timeout = 30

        def ping(self, uuid_, timeout=None):
            asked.append(('ping', timeout))
            return True

        def addresses(self, uuid_, timeout=None):
            asked.append(('addresses', timeout))
            return [{'name': 'eth0', 'mac': 'fa:16:3e:00:00:01',
                     'ips': ['10.0.0.7']}]

        def thaw_leftover(self, name, uuid_):
            asked.append(('thaw_leftover', name))
            return False
    monkeypatch.setattr(h.driver, 'guest_agent', Agent())
    assert h.info(uuid)['guest_agent'] is False     # get_info asks nothing
    assert asked == []
    h.manager.on_guest_agent_event(uuid, True, False)
    for _ in range(100):
        if h.info(uuid)['guest_addresses']:
            break
        threading.Event().wait(0.05)
    info = h.info(uuid)
    assert info['guest_agent'] is True
    assert info['guest_addresses'][0]['ips'] == ['10.0.0.7']
    # Probes use the short deadline, and look for a leftover freeze.
    assert ('ping', guest_agent.PROBE_TIMEOUT) in asked
    assert ('thaw_leftover', instance['name']) in asked


def test_polling_many_guests_runs_a_few_probe_threads(h, monkeypatch):
    """Every running guest is probed once, by at most PROBE_CONCURRENCY
    threads: not one thread per guest."""
    from compute_agent import guest_agent_ops
    uuids = [h.spawn()[0]['uuid'] for _ in range(10)]
    lock, release = threading.Lock(), threading.Event()
    asked, running, peak = [], [0], [0]

    class Agent:
        timeout = 30

        def ping(self, uuid_, timeout=None):
            with lock:
                asked.append(uuid_)
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            release.wait(10)
            with lock:
                running[0] -= 1
            raise exception.GuestAgentUnavailable(uuid=uuid_, reason='none')
    monkeypatch.setattr(h.driver, 'guest_agent', Agent())
    before = threading.active_count()
    h.manager.poll_guest_agents()
    h.manager.poll_guest_agents()       # pending ones are not queued twice
    probes = [t for t in threading.enumerate()
              if t.name == 'guest-agent-probe']
    assert len(probes) == guest_agent_ops.PROBE_CONCURRENCY
    assert threading.active_count() - before == len(probes)
    release.set()
    for t in probes:
        t.join(10)
    assert sorted(asked) == sorted(uuids)
    assert peak[0] <= guest_agent_ops.PROBE_CONCURRENCY
    h.manager.poll_guest_agents()       # a later poll probes them again
    for t in [t for t in threading.enumerate()
              if t.name == 'guest-agent-probe']:
        t.join(10)
    assert len(asked) == 2 * len(uuids)


# -- power operations never wait on a guest agent -------------------------------------

class _Dom:
    def __init__(self, refuse_flags):
        self.refuse_flags, self.calls = refuse_flags, []

    def shutdownFlags(self, flags):
        self.calls.append(('shutdownFlags', flags))
        if self.refuse_flags:
            raise libvirt.libvirtError('unsupported flags')

    def shutdown(self):
        self.calls.append(('shutdown',))


@pytest.mark.parametrize('refuse_flags, calls', [
    # kvm/qemu: the ACPI button only (flags 0 would let libvirt prefer a
    # connected guest agent, which may hang for its whole deadline)
    (False, [('shutdownFlags', libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)]),
    # a domain type without ACPI refuses the flag: libvirt's own choice
    (True, [('shutdownFlags', libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN),
            ('shutdown',)]),
])
def test_acpi_shutdown(monkeypatch, refuse_flags, calls):
    monkeypatch.setattr(libvirt.libvirtError, 'get_error_code',
                        lambda self: libvirt.VIR_ERR_INVALID_ARG)
    dom = _Dom(refuse_flags)
    guest.acpi_shutdown(dom)
    assert dom.calls == calls
