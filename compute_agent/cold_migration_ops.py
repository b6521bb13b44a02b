"""Cold migration (``migrate``, docs: protocol-method-migrate), mixed into
``Manager``.

The source coordinates and writes each decision to its journal before it
acts on it (crash safety: cold_migration_settle.py finishes what a death
interrupted):

1. pre-check (``_migration_check``, block mode); ``migrate.start`` saved
   with the record's ``migration`` mark ``{'cold': True, 'dest', ...}``;
2. the guest stopped, its disks exported (``virt.coldmigration``) and
   ``_cold_migration_receive`` at the destination: it saves a record marked
   ``incoming`` (cold), copies the disks and defines the guest on the new
   flavor, but neither starts it nor owns it;
3. the decision ``'decided': dest`` saved in the mark; from then on the
   migration only goes forward: ``_migration_take_over`` at the
   destination starts the guest, makes the record its own (vm_state
   ``resized``, its ``host``, the sequence going on) and reports
   ``migrate.end``;
4. the source undefines its stopped domain, releases VIFs, filters and
   volumes and deletes its record, keeping the outcome as a journal
   tombstone for the request's redelivery; its instance files stay as the
   saved state of the resize.

A failure before the decision aborts: the destination rolls back
(``_migration_rollback``, best effort: it never starts the guest on its own),
the guest starts here again, ``migrate.error`` with this host.

The destination's record keeps resize's ``resize`` key with ``host`` =
the source and every file in ``create``, plus ``source_spec`` (the old
request) so ``confirm_resize`` and ``revert_resize`` sent to it act
through the source agent:

``_cold_migration_drop`` (confirm)
    the source removes its kept files.
``_cold_migration_restore`` (revert)
    the source defines and boots the old guest on its kept files, saves the
    record as its own (sequence continued) and reports
    ``revert_resize.end`` with its ``host``; the destination then removes
    everything of the guest and forgets it. The destination coordinates:
    its record's mark ``{'cold': 'revert', 'to': source}`` is saved before
    it stops its copy, and only a definite refusal of the source puts its
    copy back; an unanswered call is asked again (settlement).
"""

import logging
import time

from compute_agent import exception
from compute_agent import pause_points
from compute_agent import states
from compute_agent.conf import libvirt as libvirt_conf
from compute_agent.migration_ops import (
    TAKE_OVER_ATTEMPTS, _checked_spec, _refusal, settled_here)
from compute_agent.records import public
from compute_agent.rpc import peer as peer_mod

LOG = logging.getLogger(__name__)
METHOD = 'migrate'
REVERT = 'revert_resize'


def _migration_error(uuid, exc):
    if isinstance(exc, exception.MigrationError):
        return exc
    return exception.MigrationError(uuid=uuid, reason=str(exc))


class ColdMigrationOperations:

    # -- the source ----------------------------------------------------------------
    def do_migrate(self, context, instance_uuid, dest_host, flavor=None):
        uuid, request_id = instance_uuid, context.get('request_id')
        with self._lock(uuid):
            outcome = self._migrated_outcome(uuid, request_id)
            if outcome is not None:
                return outcome      # its redelivery: the outcome, kept
            record = self._get(uuid)
            if (record.get('migration') or {}).get('cold') is True:
                # An interrupted migrate (a death): settled first; a
                # redelivery then gets its outcome, never a second one.
                self.settle_cold_source(record)
                outcome = self._migrated_outcome(uuid, request_id)
                if outcome is not None:
                    return outcome
                record = self._get(uuid)
                if record.get('migration'):
                    raise exception.MigrationError(
                        uuid=uuid, reason='an interrupted migration to %s is '
                        'not settled yet' % record['migration']['dest'])
            settled_here(record, request_id, METHOD)
            self._check(METHOD, METHOD, uuid, record, context)
            spec = record['spec']
            old_flavor = spec['instance']['flavor']
            new_flavor = flavor or old_flavor
            try:
                if dest_host == self.host:
                    raise exception.MigrationPreCheckError(
                        uuid=uuid, reason='dest_host is this host')
                # Never shrinks: InvalidRequest naming the flavor's field.
                self.planner.resize(spec, old_flavor, new_flavor)
            except Exception as exc:
                self._refused(record, context, METHOD, exc)
                raise
        with peer_mod.Peer(self.conf, dest_host, context) as peer:
            try:
                self._cold_pre_check(peer, record, new_flavor)
            except Exception as exc:
                err = _refusal(uuid, exc)
                self._refused(record, context, METHOD, err)
                raise err from None
            mark = {'cold': True, 'dest': dest_host, 'flavor': new_flavor,
                    'request_id': request_id}
            with self._lock(uuid):
                self._set(record, context, METHOD + '.start',
                          task_state=states.TRANSITIONS[METHOD].task,
                          task_request_id=request_id, error=None,
                          interrupted=None, migration=mark)
                self._moving.add(uuid)      # not for settle_migrations now
            try:
                self._cold_copy(context, record, mark, peer)
                return self.cold_hand_over(context, record, peer)
            finally:
                self._moving.discard(uuid)

    def _cold_pre_check(self, peer, record, flavor):
        """``_migration_check`` in block mode, for the memory of the new
        flavor when it is larger."""
        facts = self.driver.migration_facts(record['spec']['instance'])
        facts['memory_mb'] = max(facts['memory_mb'],
                                 int(flavor.get('memory_mb') or 0))
        return self._ask_pre_check(peer, record, facts, True)

    def _cold_copy(self, context, record, mark, peer):
        """Stop the guest, let the destination copy and define it, then
        decide for the destination (journal). Any failure before the
        decision aborts (the guest runs here again) and is raised."""
        uuid, spec = record['uuid'], record['spec']
        try:
            plan = self.planner.guest(spec)
            self.driver.power_off(spec['instance'],
                                  self.conf.libvirt.wait_soft_reboot_seconds)
            address = libvirt_conf.migration_address(self.conf)
            with self.driver.export_disks(plan, address) as (key, exports):
                peer.call('_cold_migration_receive', uuid, record=record,
                          flavor=mark['flavor'], source=self.host,
                          address=address, tls_secret=key, exports=exports)
        except Exception as exc:
            LOG.exception('%s: cold migration failed; the guest starts '
                          'here again', uuid)
            err = _migration_error(uuid, exc)
            self.cold_abort(context, record, err)
            raise err from None
        self._set(record, context, METHOD,
                  migration=dict(mark, decided=mark['dest']))

    def cold_abort(self, context, record, err):
        """Before the decision: the destination drops its copy (best
        effort: it never starts the guest unless told), the guest starts
        here, ``migrate.error`` with this host; the request's redelivery
        gets that error (settled_here), never a second migration."""
        uuid, mark = record['uuid'], record['migration']
        self._peer_rollback(context, record, mark)
        done = {'op': METHOD, 'request_id': mark.get('request_id')}
        spec = record['spec']
        try:
            self.driver.power_on(spec['instance'], self.planner.vifs(spec))
            self._set(record, context, METHOD + '.error', task_state=None,
                      power_state=self._power(record), error=err.to_dict(),
                      migration=None, interrupted=done)
        except Exception:
            LOG.exception('%s: starting the guest here again failed', uuid)
            self._set(record, context, METHOD + '.error', migration=None,
                      interrupted=done)
            self._fail(record, context, METHOD, err)

    def cold_hand_over(self, context, record, peer,
                       attempts=TAKE_OVER_ATTEMPTS):
        """Decided: the destination takes over (asked again while it does
        not answer), then this host lets go. MigrationError when it did not
        take over: the mark stays, settlement goes on."""
        uuid, mark = record['uuid'], record['migration']
        pause_points.pause('cold-source-take-over')
        outcome, why = None, None
        for attempt in range(attempts):
            try:
                outcome = peer.call(
                    '_migration_take_over', uuid, request_id=mark['request_id'],
                    sequence=self.journal.instance_sequence(uuid))
                break
            except peer_mod.PeerUnavailable as exc:
                why = exc
                LOG.warning('%s: %s has not taken over yet (%s)', uuid,
                            mark['dest'], exc)
                if attempt + 1 < attempts:
                    time.sleep(1)
            except Exception as exc:   # its libvirt, say: asked again later
                why = exc
                break
        if outcome is None:
            err = exception.MigrationError(
                uuid=uuid, reason='%s has not taken the guest over yet (%s); '
                'it is asked again' % (mark['dest'], why))
            self._set(record, context, METHOD, error=err.to_dict())
            raise err
        self._cold_let_go(record, mark, outcome)
        return outcome

    def _cold_let_go(self, record, mark, outcome):
        uuid, spec = record['uuid'], record['spec']
        pause_points.pause('cold-source-cleanup')
        try:
            self.driver.release_cold_source(spec['instance'],
                                            spec['network_info'],
                                            spec['block_device_info'])
        except Exception:
            LOG.exception('%s: releasing the source after the migration '
                          'failed', uuid)
        with self._lock(uuid):
            self.journal.delete_instance(uuid, tombstone={'migrated': {
                'request_id': mark.get('request_id'), 'outcome': outcome}})
        self._checked.pop(uuid, None)
        LOG.info('%s: cold-migrated to %s', uuid, mark['dest'])

    def do__cold_migration_drop(self, context, instance_uuid, migration):
        """Confirm at the destination: the kept files go."""
        uuid = instance_uuid
        with self._lock(uuid):
            if self.journal.get_instance(uuid) is not None:
                raise exception.MigrationError(
                    uuid=uuid, reason='the source owns it again')
            spec = _checked_spec(migration['spec'])
            self.driver.drop_cold_source(spec['instance'])
        return None

    def do__cold_migration_restore(self, context, instance_uuid, migration):
        """Revert at the destination: the old guest runs here again, owned
        and reported by this host. Repeatable; on failure nothing of it is
        kept here but the files."""
        uuid, m = instance_uuid, migration
        with self._lock(uuid):
            record = self.journal.get_instance(uuid)
            if record is not None and not record.get('incoming'):
                return public(record)           # restored already
            spec = _checked_spec(m['spec'])
            record = dict(m['record'], spec=spec, host=self.host,
                          incoming={'source': m['source'], 'block': True,
                                    'restore': True},
                          resize=None, migration=None, devices=m['devices'])
            self.journal.save_instance(uuid, record)         # not reported
            pause_points.pause('cold-source-restore')
            try:
                self.driver.restart_cold_source(self.planner.guest(spec))
            except Exception:
                self.journal.delete_instance(uuid)  # the kept files stay
                raise
            self.journal.continue_sequence(uuid, m['sequence'])
            self._set(record, context, 'revert_resize.end',
                      vm_state=states.ACTIVE, task_state=None,
                      power_state=self._power(record), error=None,
                      incoming=None, interrupted=None,
                      vnc=self._vnc(spec['instance']))
        return public(record)

    # -- the destination -------------------------------------------------------------
    def do__cold_migration_receive(self, context, instance_uuid, migration):
        """Copy and define, keeping a record marked incoming (cold): not
        started nor owned until ``_migration_take_over``."""
        uuid, m = instance_uuid, migration
        source = dict(m['record'], spec=_checked_spec(m['record']['spec']))
        if source['spec']['instance']['uuid'] != uuid or source.get('uuid') != uuid:
            raise exception.InvalidRequest('migration.record.uuid',
                                           'is not instance_uuid', uuid=uuid)
        with self._lock(uuid):
            self._clear_incoming(uuid)
            old_spec = source['spec']
            rplan = self.planner.resize(old_spec,
                                        old_spec['instance']['flavor'],
                                        m['flavor'])
            record = dict(
                source, host=self.host, spec=rplan.new_spec,
                devices=dict(rplan.new.devices), migration=None,
                interrupted=None,
                incoming={'source': m['source'], 'block': True, 'cold': True},
                resize={'old_flavor': old_spec['instance']['flavor'],
                        'new_flavor': m['flavor'], 'host': m['source'],
                        'files': {'grow': [], 'replace': [], 'drop': [],
                                  'create': [f.name for f in rplan.new.files]},
                        'source_spec': old_spec,
                        'source_devices': source.get('devices')})
            # Journal first: a death mid-copy leaves a record saying what
            # to remove (migration_settle asks the source).
            self.journal.save_instance(uuid, record)         # not reported
            try:
                self.driver.receive_cold(rplan, m['address'], m['tls_secret'],
                                         m['exports'])
            except Exception:
                self.journal.delete_instance(uuid)
                raise
        return None

    def cold_take_over(self, context, record, migration):
        """``_migration_take_over`` of a cold migration (the source decided
        for this host): start the guest, own and report it."""
        spec = record['spec']
        pause_points.pause('cold-dest-take-over')
        self.driver.power_on(spec['instance'], self.planner.vifs(spec))
        self.journal.continue_sequence(record['uuid'], migration['sequence'])
        self._set(record, context, METHOD + '.end',
                  vm_state=states.RESIZED, task_state=None,
                  power_state=self._power(record), error=None, incoming=None,
                  interrupted=None, vnc=self._vnc(spec['instance']))
        return public(record)

    def cold_confirm(self, record, context):
        """confirm_resize of a cold migration here: the source drops its copy."""
        saved = record['resize']
        with peer_mod.Peer(self.conf, saved['host'], context) as peer:
            peer.call('_cold_migration_drop', record['uuid'],
                      spec=saved['source_spec'])

    def forget_cold_source(self, record, context):
        """``destroy`` of a cold-migrated instance not yet confirmed: the
        source's kept copy goes too (best effort: a source that does not
        answer keeps it, logged)."""
        saved = record.get('resize') or {}
        if saved.get('host', self.host) == self.host:
            return
        try:
            self.cold_confirm(record, context)
        except Exception:
            LOG.exception('%s: the source %s did not drop its copy',
                          record['uuid'], saved['host'])

    def cold_revert(self, context, instance_uuid):
        """revert_resize of a cold migration here: the guest back to the
        source (which owns and reports it), nothing of it left here."""
        uuid, request_id = instance_uuid, context.get('request_id')
        with self._lock(uuid):
            outcome = self._migrated_outcome(uuid, request_id)
            if outcome is not None:
                return outcome      # its redelivery: the outcome, kept
            record = self._get(uuid)
            if (record.get('migration') or {}).get('cold') != 'revert':
                self._check(REVERT, REVERT, uuid, record, context)
                self._set(record, context, REVERT + '.start',
                          task_state=states.TRANSITIONS[REVERT].task,
                          task_request_id=request_id, interrupted=None,
                          migration={'cold': 'revert', 'request_id': request_id,
                                     'to': record['resize']['host']})
            # else: an interrupted revert (a death): this finishes it
            return self.cold_revert_step(context, record)

    def cold_revert_step(self, context, record, settling=False):
        """Stop the copy here, the source restores; then nothing of it
        stays here. Unanswered: MigrationError, the mark stays (asked
        again). Refused: the copy runs here again, ``revert_resize.error``."""
        uuid, saved, spec = record['uuid'], record['resize'], record['spec']
        mark = record['migration']
        # Stopped (not removed) first: the old guest has the same MACs and
        # addresses, and this copy must stay until the source owns it.
        self.driver.stop_cold_copy(spec['instance'])
        source_record = {k: v for k, v in record.items()
                         if k not in ('resize', 'spec', 'devices', 'migration')}
        try:
            with peer_mod.Peer(self.conf, mark['to'], context) as peer:
                outcome = peer.call(
                    '_cold_migration_restore', uuid, record=source_record,
                    spec=saved['source_spec'],
                    devices=saved.get('source_devices') or {},
                    source=self.host,
                    sequence=self.journal.instance_sequence(uuid) + 1)
        except peer_mod.PeerUnavailable as exc:
            err = exception.MigrationError(
                uuid=uuid, reason='%s did not answer (%s); the revert is '
                'finished when it does' % (mark['to'], exc))
            self._set(record, context, REVERT, error=err.to_dict())
            raise err from None
        except Exception as exc:
            LOG.exception('%s: the source did not take the guest back; '
                          'it runs here again', uuid)
            err = _migration_error(uuid, exc)
            done = {'op': REVERT, 'request_id': mark.get('request_id')} \
                if settling else None
            try:
                self.driver.power_on(spec['instance'], self.planner.vifs(spec))
                self._set(record, context, REVERT + '.error', task_state=None,
                          power_state=self._power(record), migration=None,
                          interrupted=done, error=err.to_dict())
            except Exception:
                self._set(record, context, REVERT + '.error', migration=None,
                          interrupted=done)
                self._fail(record, context, REVERT, err)
            raise err from None
        pause_points.pause('cold-revert-restored')
        try:
            self.driver.remove_cold_copy(spec['instance'], spec['network_info'],
                                         spec['block_device_info'])
        except Exception:
            LOG.exception('%s: removing the reverted copy here failed', uuid)
        self.journal.delete_instance(uuid, tombstone={'migrated': {
            'request_id': mark.get('request_id'), 'outcome': outcome}})
        self._checked.pop(uuid, None)
        return outcome
