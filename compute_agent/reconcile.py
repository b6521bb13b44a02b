"""Records brought in line with libvirt: the changes nobody asked for
(lifecycle events, the periodic power sync) and recovery at start, which
finishes or rolls back what a restart interrupted (``states.RECOVERY``).

Mixed into ``Manager``.
"""

import logging

from compute_agent import states
from compute_agent.records import now, public

LOG = logging.getLogger(__name__)

# _reconcile without a sync's listing: ask libvirt about the one instance.
_ASK = object()

# Seconds until an event's look at an instance an operation holds is tried
# again (Reconciliation._look).
BUSY_AGAIN = 1.0


class Reconciliation:

    def on_power_event(self, uuid, power_state=None):
        """A libvirt lifecycle event; operations in flight report their own.

        A stop is only reported once it has held for ``[libvirt]
        stopped_event_delay`` s: a guest rebooting itself may pass through
        one, and the state read when the delay is over is what counts.
        """
        delay = self.conf.libvirt.stopped_event_delay
        if power_state == states.SHUTDOWN and delay > 0:
            self._check_later(uuid, delay)
        else:
            self._look(uuid, delay, retry=True)

    def _check_later(self, uuid, delay):
        """Look at ``uuid`` in ``delay`` s; a stop found then is reported."""
        self._later.call(delay, self._look, uuid, 0)

    def _look(self, uuid, stop_delay, retry=False):
        """Bring ``uuid`` in line after an event, waiting for nothing.

        Every guest's events come through one thread, and every delayed
        look through another (``later.py``): neither may wait for an
        instance whose lock an operation holds, maybe for minutes (a cold
        migration copying disks). That operation reports its own states;
        what changed besides is looked at once it is done (``BUSY_AGAIN``).
        Looks from the delayed thread ask libvirt once, as the periodic
        sync does: with libvirtd down, a minute of reconnecting for each
        would hold up every other guest's.
        """
        with self._lock(uuid, blocking=False) as held:
            if held:
                self._reconcile(uuid, 'power.lifecycle', True,
                                stop_delay=stop_delay, retry=retry)
                return
        self._later.call(BUSY_AGAIN, self._look, uuid, stop_delay)

    def sync_power_states(self):
        """Check every record against one listing of libvirt's domains.

        When libvirt cannot be asked, each instance is reported once as
        ``power.unknown`` (power_state 0, vm_state kept): silence is never
        taken for a stop. The next sync that reaches libvirt corrects it.
        """
        started = now()
        try:
            powers = self.driver.list_domains(retry=False)
        except Exception as exc:
            LOG.warning('power sync: libvirt cannot be asked: %s', exc)
            powers = None
        if powers is not None:
            for uuid in powers:
                self._checked[uuid] = started
        # uuids only: _reconcile reads each record under its lock anyway.
        for uuid in self.journal.instance_uuids():
            record = self._reconcile(uuid, 'power.sync', only_idle=True,
                                     listing=powers, listed_at=started)
            try:
                if record is not None:
                    self.driver.trim_console_log(record['spec']['instance'])
            except Exception:
                LOG.exception('%s: trimming the console log failed', uuid)

    def _reconcile(self, uuid, event, only_idle, listing=_ASK, listed_at=None,
                   stop_delay=0, retry=True):
        """Bring a record in line with libvirt.

        ``listing`` is a sync's ``{uuid: power}`` (None: libvirt could not
        be asked) read before the lock: a record changed since then is
        asked about again. ``stop_delay``: a stop found by a look another
        event caused (a late start event, say, landing in a reboot's short
        stop) counts only once it has held that long, like a stop event.
        ``retry=False``: one attempt to reach libvirt (``listing`` _ASK).
        Returns the record (None: there is none).
        """
        with self._lock(uuid):
            record = self.journal.get_instance(uuid)
            if (record is None or (only_idle and record['task_state'])
                    or record['vm_state'] in (states.BUILDING, states.DELETED)):
                return record
            if listing is _ASK or record['updated_at'] >= listed_at:
                power = self._probe(record, retry)
            elif listing is None:
                power = None
            else:
                power = listing.get(uuid, states.NOSTATE)
            if power is None:
                if record['power_state'] != states.NOSTATE:
                    self._set(record, {}, 'power.unknown',
                              power_state=states.NOSTATE)
                return record
            if (stop_delay > 0 and power == states.SHUTDOWN
                    and record['power_state'] != states.SHUTDOWN):
                self._check_later(uuid, stop_delay)
                return record
            vm_state = states.vm_state_for_power(
                record['vm_state'], power, bool(record.get('rescue')))
            if (vm_state, power) != (record['vm_state'], record['power_state']):
                self._set(record, {}, event, vm_state=vm_state,
                          power_state=power)
            return record

    def recover(self):
        """At start: settle every record, finishing or rolling back what a
        restart interrupted (``states.RECOVERY``); the interrupted request's
        redelivery then completes it (``states.verdict``)."""
        for record in self.journal.list_instances():
            if record.get('incoming') or record.get('migration'):
                # Settled after start, with the other agent (migration_settle).
                continue
            if 'rescue' not in record:      # kept by an agent before 'rescue'
                with self._lock(record['uuid']):
                    rescued = self.driver.is_rescued(record['spec']['instance'])
                    self._set(record, {}, 'recover', rescue={
                        'rescue_image_meta': None} if rescued else None)
            if not record['task_state']:
                self._reconcile(record['uuid'], 'recover', only_idle=True)
                continue
            with self._lock(record['uuid']):
                self._recover(record)
        # Off the start path: thaw what a freeze left frozen, learn who answers.
        self.poll_guest_agents()

    def _recover(self, record):
        task = record['task_state']
        spec = record['spec']
        action = states.RECOVERY.get(task)
        rescued = bool(record.get('rescue'))
        changes = {}
        try:
            if action == 'destroy':
                self.driver.destroy(spec['instance'], spec['network_info'],
                                    spec['block_device_info'], cleanup=True)
            elif action == 'unrescue':
                if self.driver.is_rescued(spec['instance']):
                    self.driver.unrescue(spec['instance'], self._vifs(record))
                rescued, changes['rescue'] = False, None
            elif action == 'abort_snapshot':
                changes.update(self.recover_snapshot(record))
            elif action == 'boot' and self.driver.exists(spec['instance']):
                self.driver.power_on(spec['instance'], self._vifs(record))
            elif action in ('revert_resize', 'confirm_resize'):
                changes.update(self.recover_resize(action, record))
        except Exception:
            LOG.exception('%s: recovering from %s failed', record['uuid'], task)
        power = self._power(record)
        vm_state, error = states.recovered(task, power, rescued)
        if vm_state == states.ACTIVE and task == 'spawning':
            changes.update(devices=self._devices(record),
                           vnc=self._vnc(spec['instance']))
        self._set(record, {}, 'recover', vm_state=vm_state, task_state=None,
                  power_state=power, error=error,
                  interrupted={'op': states.TASK_OPERATION.get(task),
                               'request_id': record.get('task_request_id')},
                  **changes)
        if vm_state == states.DELETED:
            self._delete(record['uuid'])
            # Its redelivery must still get the destroy's outcome, though the
            # record is gone (docs: protocol-recovery).
            self._destroyed[record['uuid']] = (record.get('task_request_id'),
                                              public(record))

    def _devices(self, record):
        """The devices a spawn interrupted after its guest started chose."""
        try:
            return dict(self.planner.guest(record['spec']).devices)
        except Exception:
            LOG.exception('%s: cannot plan its devices', record['uuid'])
            return record.get('devices') or {}
