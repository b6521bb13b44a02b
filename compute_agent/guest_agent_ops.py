"""The guest agent as the manager sees it: set_admin_password and the
record's ``guest_agent`` / ``guest_addresses`` (docs: protocol-guest-agent).

Mixed into ``Manager``. ``set_admin_password`` is one row of
``states.TRANSITIONS`` (task ``updating_password``, from an active guest,
back to where it was); without an answering guest agent it fails
``GuestAgentUnavailable`` within ``[libvirt] guest_agent_timeout`` and the
states are as they were.

What the guest agent last showed is kept in memory (``_ga``) and written
into the record with its next save: a probe runs beside whatever operation
the guest is in, and saving a record from there would race that
operation's own save. It is learnt off the request path, never by
``get_info``:

* libvirt's agent lifecycle event: the channel opened (a guest agent
  started) -> a probe (ping, addresses); the guest started -> reset;
* the periodic ``poll_guest_agents`` (and once at recovery): the same probe
  for every guest that runs, at most one probe per guest at a time and
  ``PROBE_CONCURRENCY`` in all; it also thaws a guest a freeze left frozen
  (``virt/guest_agent.py``).
"""

import collections
import logging
import threading

from compute_agent import exception
from compute_agent import records
from compute_agent import states
from compute_agent.virt import guest_agent

LOG = logging.getLogger(__name__)

# Probes in flight at once. A guest-agent call that gets no answer holds
# one of libvirtd's worker threads (20 by default, shared by every client)
# until its deadline: background probes of many silent guests must leave
# most of them to the operations.
PROBE_CONCURRENCY = 4


class GuestAgentOperations:

    def _init_guest_agent(self):
        self._ga_lock = threading.Lock()
        self._ga = {}           # uuid -> {'guest_agent', 'guest_addresses'}
        self._ga_probing = set()        # queued or being probed
        self._ga_queue = collections.deque()
        self._ga_threads = 0            # draining _ga_queue

    # -- set_admin_password (docs: protocol-method-set-admin-password) ----------
    def do_set_admin_password(self, context, instance_uuid, admin_password,
                              user='root'):
        def call(record, _plan):
            self._guest_agent().set_user_password(instance_uuid, user,
                                                  admin_password)
            self._ga_update(instance_uuid, guest_agent=True)
        return records.public(self._run(context, 'set_admin_password',
                                        instance_uuid, call,
                                        keep_on_failure=True))

    def _guest_agent(self):
        agent = getattr(self.driver, 'guest_agent', None)
        if agent is None:
            raise exception.GuestAgentUnavailable(
                uuid='-', reason='this driver has no guest agent channel')
        return agent

    # -- a destroy cancels the guest's guest-agent commands -----------------------
    def _destroy_queued(self, uuid):
        agent = getattr(self.driver, 'guest_agent', None)
        if agent is not None and uuid:
            agent.doom(uuid)

    def _destroy_ran(self, uuid):
        agent = getattr(self.driver, 'guest_agent', None)
        if agent is not None and uuid:
            agent.undoom(uuid)
        with self._ga_lock:
            self._ga.pop(uuid, None)

    # -- what the record shows -------------------------------------------------------
    def _ga_fields(self, uuid):
        """The fields to write into the record (empty: nothing learnt)."""
        with self._ga_lock:
            return dict(self._ga.get(uuid) or {})

    def _ga_update(self, uuid, **fields):
        with self._ga_lock:
            self._ga.setdefault(uuid, {}).update(fields)

    # -- events and probes ------------------------------------------------------------
    def on_guest_agent_event(self, uuid, connected, domain_started):
        """libvirt's agent lifecycle event (libvirt-events thread): never
        waits on the guest agent itself."""
        if domain_started and not connected:
            # A new start: nothing has answered since.
            self._ga_update(uuid, guest_agent=False, guest_addresses=None)
        if connected:
            self._ga_probe_soon(uuid)

    def poll_guest_agents(self):
        """Probe every running guest's agent (PROBE_CONCURRENCY at a time)."""
        for uuid in self.journal.instance_uuids():
            record = self.journal.get_instance(uuid)
            if record and record.get('power_state') == states.RUNNING:
                self._ga_probe_soon(uuid)

    def _ga_probe_soon(self, uuid):
        """Queue a probe of ``uuid`` (once while one is pending). Up to
        PROBE_CONCURRENCY threads drain the queue: a thread per guest
        would start a thousand at once on a host with a thousand guests,
        each with its stack and thread state."""
        with self._ga_lock:
            if uuid in self._ga_probing:
                return
            self._ga_probing.add(uuid)
            self._ga_queue.append(uuid)
            if self._ga_threads >= PROBE_CONCURRENCY:
                return
            self._ga_threads += 1
        threading.Thread(target=self._ga_drain, daemon=True,
                         name='guest-agent-probe').start()

    def _ga_drain(self):
        while True:
            with self._ga_lock:
                if not self._ga_queue:
                    self._ga_threads -= 1
                    return
                uuid = self._ga_queue.popleft()
            try:
                self._ga_ask(uuid)
            except Exception:
                LOG.exception('%s: guest agent probe failed', uuid)
            finally:
                with self._ga_lock:
                    self._ga_probing.discard(uuid)

    def _ga_ask(self, uuid):
        """Ping (short deadline), thaw a leftover freeze, read addresses."""
        agent = getattr(self.driver, 'guest_agent', None)
        record = self.journal.get_instance(uuid)
        if agent is None or record is None:
            return
        deadline = min(guest_agent.PROBE_TIMEOUT, agent.timeout)
        try:
            agent.ping(uuid, timeout=deadline)
        except (exception.GuestAgentUnavailable,
                exception.InstanceNotFound) as e:
            LOG.debug('%s: guest agent probe: %s', uuid, e)
            return
        if not self._ga_fields(uuid).get('guest_agent'):
            LOG.info('%s: guest agent answers', uuid,
                     extra={'instance_uuid': uuid})
        self._ga_update(uuid, guest_agent=True)
        agent.thaw_leftover(record['name'], uuid)
        try:
            self._ga_update(uuid, guest_addresses=agent.addresses(
                uuid, timeout=deadline))
        except (exception.GuestAgentUnavailable,
                exception.InstanceNotFound) as e:
            LOG.debug('%s: no addresses from the guest agent: %s', uuid, e)
