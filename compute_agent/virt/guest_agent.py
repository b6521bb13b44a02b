"""Guest-agent commands, each with a deadline (mechanism, no policy).

The QEMU guest agent (qemu-ga) in a guest answers on the
``org.qemu.guest_agent.0`` channel (builder). Its commands go through
libvirt: ``guest-ping`` and ``guest-fsfreeze-status`` by
``libvirt_qemu.qemuAgentCommand`` (with its own timeout), freeze, thaw,
``guest-set-user-password`` (crypted=false) and the guest's addresses by
libvirt's own calls after ``agentSetResponseTimeout``.

A guest agent may never answer. So every command:

* runs in a thread of its own on a libvirt connection of its own
  (``Connection.dedicated``): a stuck call never holds a pooled connection
  the guests' other operations need, and blocks no lock (the manager's
  per-instance lock is not held around it);
* is waited for at most ``[libvirt] guest_agent_timeout`` seconds, then
  fails ``GuestAgentUnavailable``; libvirt's agent response timeout is set to
  the same deadline, so the abandoned thread ends on its own soon after;
* is cancelled by a ``destroy`` of the same guest (``doom``), see below.

``quiesced()`` is the freeze/thaw context manager a snapshot runs inside.
While a guest may be frozen a mark file lies in its instance directory
(written before the freeze, removed once a thaw succeeded), so a freeze
that our agent's death interrupted is thawed at recovery or when the guest
agent comes back (``thaw_leftover``).
"""

import collections
import contextlib
import json
import logging
import os
import threading

import libvirt

from compute_agent import exception
from compute_agent.virt import disks

try:
    import libvirt_qemu
except ImportError:         # pragma: no cover - shipped with libvirt-python
    libvirt_qemu = None

LOG = logging.getLogger(__name__)

#: Seconds the ping of ``quiesced(quiesce=None)`` may take: a guest whose
#: agent does not answer that fast is snapshotted unfrozen at once.
PROBE_TIMEOUT = 5
#: The instance directory's file that says "may be frozen, thaw me".
FROZEN_MARK = 'guest-frozen'


class GuestAgent:
    """Guest-agent commands on one host's guests, by instance uuid.

    ``connection`` is the driver's ``connection.Connection``. Errors:
    ``GuestAgentUnavailable`` (no guest agent, no answer within the
    deadline, the command failed in the guest, or a destroy of the guest
    is on its way), ``InstanceNotFound`` (no domain).
    """

    def __init__(self, conf, connection):
        self.conf = conf
        self.connection = connection
        self._lock = threading.Lock()
        self._waiters = collections.defaultdict(set)   # uuid -> wake events
        self._doomed = collections.Counter()           # uuid -> destroys due
        self._quiescing = set()     # uuids inside quiesced(): their mark is ours

    @property
    def timeout(self):
        return self.conf.libvirt.guest_agent_timeout

    # -- cancellation by destroy ------------------------------------------------
    # Why: operations on one instance run one at a time in arrival order
    # (rpc/workers.KeyedExecutor), so a destroy that arrives while a
    # set_admin_password or a snapshot waits on a hung guest agent would wait
    # for the whole deadline. The manager calls ``doom`` when the destroy is
    # accepted (on the consume thread, before it is queued behind the hung
    # operation): every guest-agent command of that guest waiting now fails
    # at once, and any started before the destroy has run fails at once too.
    # The guest is about to go, so nothing is lost; the libvirt call left
    # behind ends when the destroy kills QEMU (its agent socket closes).
    def doom(self, uuid):
        """A destroy of ``uuid`` is queued: cancel its guest-agent commands."""
        with self._lock:
            self._doomed[uuid] += 1
            waiters = list(self._waiters.get(uuid, ()))
        for wake in waiters:
            wake.set()

    def undoom(self, uuid):
        """That destroy has run (or failed): commands may run again."""
        with self._lock:
            if self._doomed[uuid] > 1:
                self._doomed[uuid] -= 1
            else:
                self._doomed.pop(uuid, None)

    def doomed(self, uuid):
        with self._lock:
            return self._doomed.get(uuid, 0) > 0

    # -- the deadline -----------------------------------------------------------
    def _run(self, uuid, what, fn, timeout=None):
        """``fn(dom, timeout)`` on a dedicated connection, waited for at most
        ``timeout`` s (``guest_agent_timeout``); its result."""
        timeout = timeout or self.timeout
        wake = threading.Event()
        box = {}
        with self._lock:
            if self._doomed.get(uuid):
                raise exception.GuestAgentUnavailable(
                    uuid=uuid, reason='%s cancelled: the instance is being '
                                      'destroyed' % what)
            self._waiters[uuid].add(wake)

        def on_domain(conn):
            try:
                dom = conn.lookupByUUIDString(uuid)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise exception.InstanceNotFound(uuid=uuid) from None
                raise
            return fn(dom, timeout)

        def work():
            try:
                box['result'] = self.connection.dedicated(on_domain)
            except BaseException as e:  # noqa: BLE001 - handed to the waiter
                box['error'] = e
            finally:
                wake.set()
        threading.Thread(target=work, daemon=True,
                         name='guest-agent-%s' % what).start()
        try:
            wake.wait(timeout)
        finally:
            with self._lock:
                self._waiters[uuid].discard(wake)
                if not self._waiters[uuid]:
                    del self._waiters[uuid]
        if 'error' in box:
            raise _translate(box['error'], uuid, what)
        if 'result' in box:
            return box['result']
        if self.doomed(uuid):
            reason = '%s cancelled: the instance is being destroyed' % what
        else:
            reason = '%s got no answer within %s s' % (what, timeout)
        raise exception.GuestAgentUnavailable(uuid=uuid, reason=reason)

    def _agent_command(self, uuid, what, command, timeout=None):
        """A raw command through qemuAgentCommand; its ``return`` value."""
        if libvirt_qemu is None:    # pragma: no cover
            raise exception.GuestAgentUnavailable(
                uuid=uuid, reason='libvirt_qemu is not available')
        text = json.dumps({'execute': command})

        def run(dom, deadline):
            return libvirt_qemu.qemuAgentCommand(dom, text, int(deadline), 0)
        reply = self._run(uuid, what, run, timeout)
        try:
            return json.loads(reply).get('return')
        except (ValueError, AttributeError):
            raise exception.GuestAgentUnavailable(
                uuid=uuid, reason='%s: unreadable reply' % what) from None

    @staticmethod
    def _with_timeout(call):
        """``call(dom)`` after libvirt's agent response timeout is set to the
        deadline (libvirt's default is to wait forever)."""
        def run(dom, deadline):
            dom.agentSetResponseTimeout(int(deadline), 0)
            return call(dom)
        return run

    # -- commands ---------------------------------------------------------------
    def ping(self, uuid, timeout=None):
        """True when the guest agent answers ``guest-ping`` in time."""
        self._agent_command(uuid, 'guest-ping', 'guest-ping', timeout)
        return True

    def freeze(self, uuid):
        """Freeze the guest's file systems; how many were frozen."""
        return self._run(uuid, 'fsfreeze', self._with_timeout(
            lambda dom: dom.fsFreeze(None, 0)))

    def thaw(self, uuid, timeout=None):
        """Thaw them; how many were thawed (0 when none were frozen)."""
        return self._run(uuid, 'fsthaw', self._with_timeout(
            lambda dom: dom.fsThaw(None, 0)), timeout)

    def freeze_status(self, uuid):
        """``'thawed'`` or ``'frozen'`` as the guest agent says."""
        return self._agent_command(uuid, 'fsfreeze-status',
                                   'guest-fsfreeze-status')

    def set_user_password(self, uuid, user, password):
        """``guest-set-user-password`` with crypted=false: the guest hashes
        it. The password goes to libvirt only, never to a log."""
        self._run(uuid, 'guest-set-user-password command', self._with_timeout(
            lambda dom: dom.setUserPassword(user, password, 0)))

    def addresses(self, uuid, timeout=None):
        """The guest's interfaces as its agent reports them: a list of
        ``{'name', 'mac', 'ips'}`` (loopback left out)."""
        src = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT
        ifaces = self._run(uuid, 'network-get-interfaces', self._with_timeout(
            lambda dom: dom.interfaceAddresses(src, 0)), timeout)
        return interfaces_from(ifaces)

    # -- the frozen mark --------------------------------------------------------
    def _mark_path(self, domain_name):
        return disks.safe_join(disks.instance_dir(self.conf, domain_name),
                               FROZEN_MARK)

    def mark_frozen(self, domain_name, uuid):
        """Persist "may be frozen" before a freeze (fsynced)."""
        path = self._mark_path(domain_name)
        with self._lock:
            self._quiescing.add(uuid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, uuid.encode() + b'\n')
            os.fsync(fd)
        finally:
            os.close(fd)

    def quiesce_ended(self, uuid):
        """quiesced() is done with the guest: a mark left now is a leftover."""
        with self._lock:
            self._quiescing.discard(uuid)

    def is_marked(self, domain_name):
        try:
            return os.path.exists(self._mark_path(domain_name))
        except exception.AgentError:
            return False

    def thaw_marked(self, domain_name, uuid, timeout=None):
        """Thaw and drop the mark; True when the guest is known thawed.

        A failed thaw keeps the mark (logged, never raised): the guest
        agent's return (``thaw_leftover``) or the next recovery thaws it.
        """
        try:
            count = self.thaw(uuid, timeout)
        except exception.InstanceNotFound:
            count = 0       # no guest, nothing frozen
        except exception.GuestAgentUnavailable as e:
            LOG.warning('%s: thaw failed, will thaw when the guest agent is '
                        'back: %s', uuid, e.kwargs.get('reason'),
                        extra={'instance_uuid': uuid})
            return False
        LOG.info('%s: file systems thawed (%s)', uuid, count,
                 extra={'instance_uuid': uuid})
        try:
            os.unlink(self._mark_path(domain_name))
        except FileNotFoundError:
            pass
        return True

    def thaw_leftover(self, domain_name, uuid):
        """Thaw a guest a dead agent left frozen (its mark is there); False
        when there was nothing to do or the thaw must be tried again."""
        with self._lock:
            if uuid in self._quiescing:     # a snapshot holds it frozen now
                return False
        if not self.is_marked(domain_name):
            return False
        LOG.info('%s: thawing file systems a freeze left frozen', uuid,
                 extra={'instance_uuid': uuid})
        return self.thaw_marked(domain_name, uuid)


def interfaces_from(ifaces):
    """libvirt's interfaceAddresses dict as the record shows it."""
    out = []
    for name, iface in sorted((ifaces or {}).items()):
        if name == 'lo':
            continue
        ips = [a['addr'] for a in iface.get('addrs') or ()
               if a.get('addr') and not a['addr'].startswith(('127.', '::1'))
               and not a['addr'].lower().startswith('fe80:')]
        out.append({'name': name, 'mac': iface.get('hwaddr'), 'ips': ips})
    return out


def _translate(exc, uuid, what):
    if isinstance(exc, (exception.InstanceNotFound,
                        exception.GuestAgentUnavailable)):
        return exc
    if isinstance(exc, exception.HypervisorUnavailable):
        return exc
    if isinstance(exc, libvirt.libvirtError):
        # No agent connected, no answer, the agent's command failed in the
        # guest, the domain is not running: the guest agent cannot do it.
        return exception.GuestAgentUnavailable(
            uuid=uuid, reason='%s: %s' % (what, exc.get_error_message()))
    return exc


@contextlib.contextmanager
def quiesced(driver, domain_name, uuid, quiesce):
    """Freeze the guest's file systems around the ``with`` body.

    ``driver`` is the ``LibvirtDriver`` (its ``guest_agent``) or a
    ``GuestAgent``; ``domain_name`` the instance name (its directory holds
    the frozen mark); ``uuid`` the instance uuid. ``quiesce``:

    * True: freeze, or raise ``GuestAgentUnavailable``;
    * None: freeze when the guest agent answers a ping within
      ``PROBE_TIMEOUT`` s; when it does not, or the freeze itself fails,
      go on unfrozen;
    * False: no freeze.

    The body gets True when the file systems are frozen. Whatever happens
    (the body raises, the freeze timed out, a destroy cancelled it) a
    thaw follows any freeze attempt, and a mark persisted before the freeze
    lets a thaw our death prevented happen at recovery or when the guest
    agent is back. A destroy of the guest queued meanwhile fails the freeze
    at once (``GuestAgentUnavailable``, even for None).
    """
    agent = getattr(driver, 'guest_agent', driver)
    if quiesce is False:
        yield False
        return
    if quiesce is None:
        try:
            agent.ping(uuid, timeout=min(PROBE_TIMEOUT, agent.timeout))
        except exception.GuestAgentUnavailable as e:
            if agent.doomed(uuid):
                raise
            LOG.info('%s: no guest agent answered (%s): not quiesced', uuid,
                     e.kwargs.get('reason'), extra={'instance_uuid': uuid})
            yield False
            return
    agent.mark_frozen(domain_name, uuid)
    try:
        try:
            count = agent.freeze(uuid)
        except exception.GuestAgentUnavailable as e:
            if quiesce or agent.doomed(uuid):
                raise
            LOG.warning('%s: freeze failed (%s): going on unfrozen', uuid,
                        e.kwargs.get('reason'), extra={'instance_uuid': uuid})
            frozen = False
        else:
            LOG.info('%s: file systems frozen (%s)', uuid, count,
                     extra={'instance_uuid': uuid})
            frozen = True
        yield frozen
    finally:
        try:
            agent.thaw_marked(domain_name, uuid)
        finally:
            agent.quiesce_ended(uuid)
