"""Settling live migrations a death interrupted (docs:
protocol-migration-crashes).

Mixed into ``Manager``. A record still marked mid-migration when no request
of this process moves it (``migration`` on the source, ``incoming`` on the
destination) was left by an agent or libvirtd that died. At start, then
every ``[libvirt] live_migration_settle_interval`` until it is settled,
``settle_migrations`` asks libvirt here where the guest runs and the other
agent (``_migration_status``) what it holds and where the guest runs
there, and ends with one running copy and one owner record:

* the guest runs here, on the source (never left, or libvirt resumed it):
  the destination rolls back its part, the record keeps this host and
  reports ``live_migrate.error`` (``host`` = this host);
* the guest runs at the destination: it takes over (``live_migrate.end``,
  ``host`` = destination) and the source lets go, keeping the outcome for
  the request's redelivery;
* neither host runs it (a libvirtd or QEMU died after the copy began):
  the host holding its newest disks owns the record (``stopped_owner``),
  which says ``power_state`` shutdown and ``vm_state`` stopped, reported as
  above (``.end`` from the destination, or ``.error`` from the source);
* libvirt still moves it or the other agent does not answer: nothing is
  decided; the next round asks again.

A source whose cleanup failed after the hand-over (its libvirtd down
longer than the connection retries) keeps what to remove in the journal
tombstone (``leftover``); every round tries again until it is removed.

The source decides (it owns the record until the take-over); the
destination only rolls back an ``incoming`` record the source no longer
migrates, or takes over a guest running here that no source claims.
"""

import logging

from compute_agent import exception
from compute_agent import states
from compute_agent.cold_migration_settle import cold_step
from compute_agent.records import public
from compute_agent.rpc import peer as peer_mod

LOG = logging.getLogger(__name__)
METHOD = 'live_migrate'
_NOT_HERE = {'active': False, 'running': False, 'job': False,
             'defined': False}


def stopped_owner(phase, there):
    """Which host owns a guest neither host runs: ``'dest'`` once the
    guest ran there (the source saw libvirt finish, ``phase`` switched, or
    the destination's libvirt keeps the domain it defines only when the
    switch-over is done: its disks are the newest), else ``'source'``
    (``there``: the destination's ``_migration_status``)."""
    if phase == 'switched' or there.get('defined'):
        return 'dest'
    return 'source'


class MigrationSettlement:

    def settle_migrations(self):
        """Settle every record a dead process left mid-migration, and
        retry the cleanups a source could not finish; returns the uuids
        still unsettled."""
        left = []
        # Only marked records: this runs every few seconds.
        for record in self.journal.instances_with('incoming', 'migration'):
            # Cold migration's and cold revert's: cold_migration_settle.py.
            cold = cold_step(record)
            if not (cold or (record.get('incoming') or {}).get('live')
                    or record.get('migration')):
                continue        # (a cold revert's restore mark too)
            uuid = record['uuid']
            try:
                if not (self.settle_cold(record) if cold else self._settle(uuid)):
                    left.append(uuid)
            except peer_mod.PeerUnavailable as exc:
                LOG.info('%s: interrupted migration not settled yet: %s',
                         uuid, exc)
                left.append(uuid)
            except Exception:
                LOG.exception('%s: settling the interrupted migration failed',
                              uuid)
                left.append(uuid)
        return left + self._clean_leftovers()

    def _clean_leftovers(self):
        """Remove what a source's failed cleanup left of a guest that
        migrated away (its tombstone's ``leftover``); returns the uuids
        still not clean."""
        left = []
        for uuid, _stone in self.journal.tombstones_with('leftover'):
            with self._lock(uuid):
                stone = self.journal.tombstone(uuid)
                if not (stone or {}).get('leftover'):
                    continue            # cleaned, or here again since
                spec = stone['leftover']['spec']
                try:
                    self.driver.cleanup_migrated(
                        spec['instance'], spec['network_info'],
                        spec['block_device_info'],
                        remove_files=stone['leftover']['block'])
                except Exception as exc:
                    LOG.warning('%s: what the migration left here is not '
                                'removed yet: %s', uuid, exc)
                    left.append(uuid)
                    continue
                del stone['leftover']
                self.journal.update_tombstone(uuid, stone)
                LOG.info('%s: removed what the migration left here', uuid)
        return left

    def _settle(self, uuid):
        record = self.journal.get_instance(uuid)
        if record is not None and (record.get('incoming') or {}).get('live'):
            # Asked without the lock: the source's take-over may need it.
            with peer_mod.Peer(self.conf, record['incoming']['source']) as peer:
                there = peer.call('_migration_status', uuid)
            with self._lock(uuid):
                now = self.journal.get_instance(uuid)
                if now != record:
                    return now is None or not now.get('incoming')
                return self._settle_incoming(record, there)
        with self._lock(uuid):
            if uuid in self._moving:
                return True             # a request of this process moves it
            record = self.journal.get_instance(uuid)
            if record is None or record.get('incoming'):
                return record is None
            if record.get('migration') and record['task_state'] == 'migrating':
                return self._settle_outgoing(record)
            return True

    def _view(self, record):
        try:
            return self.driver.migration_view(record['spec']['instance'])
        except exception.InstanceNotFound:
            return dict(_NOT_HERE)

    # -- the source: it owns the record until the destination takes over ----------
    def _settle_outgoing(self, record):
        uuid, mark = record['uuid'], record['migration']
        here = self._view(record)
        if here['job']:
            return False                # libvirt still moves it
        context = {'request_id': mark.get('request_id')}
        if here['running'] and mark.get('phase') != 'switched':
            self._stays_here(record, mark, context)
            return True
        with peer_mod.Peer(self.conf, mark['dest'], context) as peer:
            there = peer.call('_migration_status', uuid)
            if there['holds'] == 'owner':
                LOG.info('%s: %s took it over already; letting go', uuid,
                         mark['dest'])
                self._let_go(record, mark, there['record'])
                return True
            if there['job']:
                return False
            if there['running'] and not here['running']:
                LOG.info('%s: it runs on %s; handing over', uuid, mark['dest'])
                outcome = peer.call(
                    '_migration_take_over', uuid,
                    sequence=self.journal.instance_sequence(uuid),
                    request_id=mark.get('request_id'))
                self._let_go(record, mark, outcome)
                return True
            if not (here['active'] or there['active']):
                return self._settle_stopped(record, mark, context, there, peer)
        if here['active']:
            self._stays_here(record, mark, context)
            return True
        LOG.warning('%s: the interrupted migration left no running copy on '
                    'this host and a paused one on %s', uuid, mark['dest'])
        return False

    def _settle_stopped(self, record, mark, context, there, peer):
        """Neither host runs the guest: the one with its newest disks
        owns the record, stopped (docs: protocol-migration-crashes)."""
        uuid = record['uuid']
        owner = stopped_owner(mark.get('phase'), there)
        LOG.warning('%s: the interrupted migration left no running copy on '
                    'this host nor on %s; the %s owns it, stopped', uuid,
                    mark['dest'], owner)
        if owner == 'source':
            self._stays_here(record, mark, context)
            return True
        outcome = peer.call('_migration_take_over', uuid,
                            sequence=self.journal.instance_sequence(uuid),
                            request_id=mark.get('request_id'))
        self._let_go(record, mark, outcome)
        return True

    def _guest_left(self, record, mark, peer):
        """After libvirt's migration failed on the source: is the guest
        the destination's now (it runs there, or neither host runs it and
        ``stopped_owner`` says the destination)? Raises when either host
        cannot be asked."""
        if self.driver.is_running_here(record['spec']['instance']):
            return False
        there = peer.call('_migration_status', record['uuid'])
        return bool(there['active']) or stopped_owner(
            mark.get('phase'), there) == 'dest'

    def _at_rest(self, record, vm_state):
        """(vm_state, power_state) of a settled guest: ``vm_state``, or
        stopped when libvirt says the guest no longer runs."""
        power = self._probe(record)
        if power is None:       # libvirt cannot be asked: silence is no stop
            return vm_state, states.NOSTATE
        return states.vm_state_for_power(vm_state, power), power

    def _stays_here(self, record, mark, context):
        """The guest stays here (it runs here, or neither host runs it and
        its newest disks are here): undo the destination's part, clear the
        mark."""
        uuid = record['uuid']
        LOG.info('%s: the interrupted migration to %s ends here', uuid,
                 mark['dest'])
        self._peer_rollback(context, record, mark)
        err = exception.MigrationError(
            uuid=uuid, reason='interrupted; the guest stays on %s' % self.host)
        vm_state, power = self._at_rest(
            record, mark.get('start_vm_state') or record['vm_state'])
        self._set(record, context, METHOD + '.error', vm_state=vm_state,
                  task_state=None, power_state=power,
                  error=err.to_dict(), migration=None,
                  interrupted={'op': METHOD,
                               'request_id': mark.get('request_id')})

    # -- the destination: its record is kept, not owned, until take-over ---------
    def _settle_incoming(self, record, there):
        uuid, source = record['uuid'], record['incoming']['source']
        mark = there.get('migration') or {}
        if there['holds'] == 'owner' and mark.get('dest') == self.host:
            return False                # the source decides (its settle)
        here = self._view(record)
        if there['holds'] is None and here['running'] and not here['job']:
            # No source claims it and it runs here: this host owns it.
            LOG.info('%s: no agent claims the guest running here; taking '
                     'it over', uuid)
            self.do__migration_take_over(
                {}, uuid, {'sequence': there.get('sequence', 0)})
            return True
        LOG.info('%s: %s no longer migrates it here; rolling back', uuid,
                 source)
        self._undo_incoming(record)
        return True

    # -- the peer call: what this host holds of the instance ------------------------
    def do__migration_status(self, context, instance_uuid, migration=None):
        uuid = instance_uuid
        with self._lock(uuid):
            record = self.journal.get_instance(uuid)
            view = self._view(record) if record else dict(_NOT_HERE)
            if record is None:
                holds = None
            elif record.get('incoming'):
                holds = 'incoming'
            else:
                holds = 'owner'
            return dict(view, holds=holds,
                        record=public(record) if holds == 'owner' else None,
                        migration=record.get('migration') if record else None,
                        sequence=self.journal.instance_sequence(uuid))
