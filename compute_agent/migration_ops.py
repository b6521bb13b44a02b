"""Live migration between two agents (docs: protocol-method-live-migrate).

Mixed into ``Manager``. The source serves ``live_migrate`` and
``live_migrate_abort``; the destination serves the handshake the source
calls over the broker (``rpc.peer``), each an ``_``-prefixed method:

``_migration_check``
    can this host take the guest (machine, memory, disk, VIF types,
    volumes), and is ``instances_path`` shared as ``block_migration`` says
    (a probe file the source wrote must be seen, or not)? Changes nothing.
``_migration_prepare``
    instance directory, disks (block migration), volumes, filters, VIFs,
    and a journal record marked ``incoming``: kept, never reported nor
    answered for (``get_info`` says InstanceNotFound) until take-over.
``_migration_take_over``
    the guest runs here now: the record becomes this host's, its
    ``sequence`` continues from the source's last number, and the
    ``live_migrate.end`` report says ``host`` = this host. Repeatable.
``_migration_rollback``
    undo ``_migration_prepare`` (never a record this host owns).

Exactly one agent owns the instance at a time: the source until the
destination's take-over has answered, then the destination; the source
then removes its domain, filters, VIFs and (unless shared) files and
forgets the record, keeping the outcome in its journal tombstone for the
request's redelivery. The record's ``migration`` mark (journal) says how
far the source got, so a redelivered ``live_migrate`` finishes that
migration instead of starting a second one; a death mid-migration is
settled without waiting for it (migration_settle).
"""

import logging
import time

from compute_agent import exception
from compute_agent import pause_points
from compute_agent import states
from compute_agent import validation
from compute_agent.conf import libvirt as libvirt_conf
from compute_agent.records import public
from compute_agent.rpc import peer as peer_mod

LOG = logging.getLogger(__name__)
METHOD = 'live_migrate'
# Peer timeouts the source waits for the destination to take over.
TAKE_OVER_ATTEMPTS = 10


def _checked_spec(spec):
    """The instance's stored request as a peer sent it, validated like a
    spawn (the destination trusts the broker, not the bytes)."""
    args = validation.validate('spawn', {
        k: spec.get(k) for k in ('instance', 'image_meta', 'network_info',
                                 'block_device_info')})
    return dict(spec, **{k: args[k] for k in (
        'instance', 'image_meta', 'network_info', 'block_device_info')})


def settled_here(record, request_id, op=METHOD):
    """Raise the outcome of ``request_id`` when settle_migrations ended its
    interrupted migration (``op``: live_migrate or migrate) with the guest
    kept here (its redelivery must not start a second one)."""
    done = record.get('interrupted') or {}
    if (done.get('op') == op and request_id is not None
            and done.get('request_id') == request_id and not record.get('migration')):
        raise exception.MigrationError(
            uuid=record['uuid'], reason='interrupted; the guest stays on %s'
            % record.get('host'))


def _refusal(uuid, exc):
    if isinstance(exc, exception.MigrationPreCheckError):
        return exc
    return exception.MigrationPreCheckError(uuid=uuid, reason=str(exc))


class MigrationOperations:

    # -- the source ----------------------------------------------------------------
    def do_live_migrate(self, context, instance_uuid, dest_host,
                        block_migration=False):
        uuid, request_id = instance_uuid, context.get('request_id')
        with self._lock(uuid):
            outcome = self._migrated_outcome(uuid, request_id)
            if outcome is not None:
                return outcome      # its redelivery: the outcome, kept
            record = self._get(uuid)
            settled_here(record, request_id)
            mark = record.get('migration')
            if not (mark and record['task_state'] == 'migrating'):
                self._check(METHOD, METHOD, uuid, record, context)
                mark = {'dest': dest_host, 'block': bool(block_migration),
                        'request_id': request_id, 'phase': 'check',
                        'start_vm_state': record['vm_state']}
                self._set(record, context, METHOD + '.start',
                          task_state=states.TRANSITIONS[METHOD].task,
                          interrupted=None, task_request_id=request_id,
                          migration=mark)
            elif self.driver.is_running_here(record['spec']['instance']):
                # An interrupted attempt whose guest never left: undo the
                # destination's part and run it again.
                self._peer_rollback(context, record, mark)
            else:
                mark['phase'] = 'switched'
            self._moving.add(uuid)      # not for settle_migrations now
        self._aborting.discard(uuid)
        try:
            with peer_mod.Peer(self.conf, mark['dest'], context) as peer:
                if mark['phase'] != 'switched':
                    self._move(context, record, mark, peer)
                return self._hand_over(context, record, mark, peer)
        finally:
            self._aborting.discard(uuid)
            self._moving.discard(uuid)

    def _migrated_outcome(self, uuid, request_id):
        """The kept outcome of ``request_id`` when it moved the instance
        away (journal tombstone: it survives a restart), else None."""
        if request_id is None or self.journal.get_instance(uuid) is not None:
            return None
        done = (self.journal.tombstone(uuid) or {}).get('migrated') or {}
        if done.get('request_id') == request_id and 'outcome' in done:
            return done['outcome']
        return None

    def _move(self, context, record, mark, peer):
        """Pre-check, prepare, migrate: the guest runs at the destination
        when this returns; on failure it runs here, the destination has
        nothing of it, and the error is reported."""
        uuid, spec = record['uuid'], record['spec']
        instance = spec['instance']
        try:
            if mark['dest'] == self.host:
                raise exception.MigrationPreCheckError(
                    uuid=uuid, reason='dest_host is this host')
            target = self._pre_check(peer, record, mark)
        except Exception as exc:
            err = _refusal(uuid, exc)
            self._refused(record, context, METHOD, err)
            self._set(record, context, METHOD + '.error', migration=None)
            raise err from None
        self._set(record, context, METHOD, migration=dict(mark, phase='prepare'))
        try:
            dest_dir = peer.call('_migration_prepare', uuid, record=record,
                                 block=mark['block'],
                                 source=self.host)['instance_dir']
            mark = dict(mark, phase='migrating')
            self._set(record, context, METHOD, migration=mark)
            if uuid in self._aborting:
                raise exception.MigrationError(
                    uuid=uuid, reason='aborted (live_migrate_abort)')
            self.driver.live_migrate(instance, target['uri'],
                                     target['migrate_uri'], dest_dir,
                                     mark['block'])
        except Exception as exc:
            # Failed after the switch-over, or did the guest die (its QEMU
            # or libvirtd)? Where it is decides (migration_settle).
            try:
                left = self._guest_left(record, mark, peer)
            except Exception as why:
                # Not known yet: the mark stays for settle_migrations.
                raise exception.MigrationError(uuid=uuid, reason='%s; where '
                    'the guest is is not known yet: %s' % (exc, why)) from None
            if left:
                LOG.warning('%s: migration reported %s but the guest left; '
                            'handing over', uuid, exc)
                mark['phase'] = 'switched'
                return
            self._peer_rollback(context, record, mark)
            err = exc if isinstance(exc, exception.MigrationError) else \
                exception.MigrationError(uuid=uuid, reason=str(exc))
            LOG.warning('%s: %s failed: %s', uuid, METHOD, err)
            vm_state, power = self._at_rest(record, record['vm_state'])
            self._set(record, context, METHOD + '.error', task_state=None,
                      error=err.to_dict(), migration=None, vm_state=vm_state,
                      power_state=power)
            raise err from None
        mark['phase'] = 'switched'
        self._set(record, context, METHOD, migration=dict(mark))

    def _pre_check(self, peer, record, mark):
        """The destination's answer to ``_migration_check`` (where to send
        the guest), with a probe file in ``instances_path`` for the
        shared-storage check."""
        facts = self.driver.migration_facts(record['spec']['instance'])
        return self._ask_pre_check(peer, record, facts, mark['block'])

    def _ask_pre_check(self, peer, record, facts, block):
        """``_migration_check`` at the destination (live and cold
        migration): a probe file in ``instances_path`` for its
        shared-storage check, removed after; a destination that does not
        answer is MigrationPreCheckError."""
        probe = self.driver.write_probe()
        try:
            return peer.call('_migration_check', record['uuid'], facts=facts,
                             spec=record['spec'], block=block, probe=probe,
                             source=self.host)
        except peer_mod.PeerUnavailable as exc:
            raise exception.MigrationPreCheckError(
                uuid=record['uuid'], reason=str(exc)) from None
        finally:
            self.driver.remove_probe(probe)

    def _peer_rollback(self, context, record, mark):
        try:
            with peer_mod.Peer(self.conf, mark['dest'], context) as peer:
                peer.call('_migration_rollback', record['uuid'])
        except Exception:
            LOG.exception('%s: the destination %s could not roll back',
                          record['uuid'], mark['dest'])

    def _hand_over(self, context, record, mark, peer):
        """The destination takes over, then this host lets go."""
        pause_points.pause('source-take-over')
        outcome = self._take_over(context, record, mark, peer)
        return self._let_go(record, mark, outcome)

    def _let_go(self, record, mark, outcome):
        """The destination owns it: remove it here; the outcome stays in
        the journal for the request's redelivery."""
        uuid, spec = record['uuid'], record['spec']
        pause_points.pause('source-cleanup')
        stone = {'migrated': {'request_id': mark.get('request_id'),
                              'outcome': outcome}}
        try:
            self.driver.cleanup_migrated(
                spec['instance'], spec['network_info'],
                spec['block_device_info'], remove_files=mark['block'])
        except Exception:
            # (e.g. libvirtd down longer than the connection retries)
            LOG.exception('%s: cleaning up after the migration failed; '
                          'settle_migrations tries again', uuid)
            stone['leftover'] = {'spec': spec, 'block': mark['block']}
        with self._lock(uuid):
            self.journal.delete_instance(uuid, tombstone=stone)
        self._checked.pop(uuid, None)
        LOG.info('%s: migrated to %s', uuid, mark['dest'])
        return outcome

    def _take_over(self, context, record, mark, peer):
        """Ask the destination to take over until it answers: the guest
        runs there, so a destination agent that is restarting must still
        become the owner. Given up after TAKE_OVER_ATTEMPTS peer timeouts:
        then the record stays marked here and a new ``live_migrate`` of the
        instance finishes the hand-over."""
        uuid = record['uuid']
        for _attempt in range(TAKE_OVER_ATTEMPTS):
            try:
                return peer.call('_migration_take_over', uuid,
                                 sequence=self.journal.instance_sequence(uuid),
                                 request_id=mark.get('request_id'))
            except peer_mod.PeerUnavailable as exc:
                LOG.warning('%s: the destination has not taken over yet '
                            '(%s); asking again', uuid, exc)
                time.sleep(1)
        err = exception.MigrationError(
            uuid=uuid, reason='the guest runs on %s but its agent did not '
            'take it over' % mark['dest'])
        self._set(record, context, METHOD + '.error', error=err.to_dict())
        raise err

    def do_live_migrate_abort(self, context, instance_uuid):
        record = self._get(instance_uuid)
        mark = record.get('migration') or {}
        if record['task_state'] != 'migrating' or mark.get('phase') not in (
                'check', 'prepare', 'migrating'):
            raise exception.InstanceInvalidState(
                action='live_migrate_abort (no migration running)',
                uuid=instance_uuid, vm_state=record['vm_state'],
                task_state=record['task_state'])
        # Before libvirt's job exists, _move sees the flag; during it,
        # libvirt cancels the job and the migration fails on the source.
        self._aborting.add(instance_uuid)
        self.driver.abort_migration(record['spec']['instance'])
        return public(record)

    # -- the destination -------------------------------------------------------------
    def do__migration_check(self, context, instance_uuid, migration):
        uuid, m = instance_uuid, migration
        pause_points.pause('dest-check')
        with self._lock(uuid):
            self._clear_incoming(uuid)
        spec = _checked_spec(m['spec'])
        if spec['instance']['uuid'] != uuid:
            raise exception.InvalidRequest('migration.spec.instance.uuid',
                                           'is not instance_uuid', uuid=uuid)
        self.driver.check_incoming(uuid, m['facts'], spec.get('network_info'),
                                   spec.get('block_device_info'),
                                   self.conf.reserved_host_memory_mb)
        shared = self.driver.sees_probe(m['probe'])
        if m['block'] and shared:
            raise exception.MigrationPreCheckError(
                uuid=uuid, reason='block_migration is true but both hosts '
                'share instances_path')
        if not m['block'] and not shared:
            raise exception.MigrationPreCheckError(
                uuid=uuid, reason='block_migration is false but the hosts do '
                'not share instances_path')
        if m['block'] and m['facts']['disk_bytes'] > self.driver.free_disk_bytes():
            raise exception.MigrationPreCheckError(
                uuid=uuid, reason='not enough free disk at the destination')
        address = libvirt_conf.migration_address(self.conf)
        host = '[%s]' % address if ':' in address else address
        return {'uri': libvirt_conf.migration_uri(self.conf, address),
                'migrate_uri': 'tcp://%s' % host}

    def do__migration_prepare(self, context, instance_uuid, migration):
        uuid, m = instance_uuid, migration
        source = dict(m['record'], spec=_checked_spec(m['record']['spec']))
        if source['spec']['instance']['uuid'] != uuid or source.get('uuid') != uuid:
            raise exception.InvalidRequest('migration.record.uuid',
                                           'is not instance_uuid', uuid=uuid)
        with self._lock(uuid):
            plan = self.planner.guest(source['spec'])
            inst_dir = self.driver.prepare_incoming(plan, m['block'])
            record = dict(source, host=self.host,
                          incoming={'source': m['source'], 'block': m['block'],
                                    'live': True})     # migration_settle's
            try:
                self.journal.save_instance(uuid, record)     # not reported
            except Exception:
                self._undo_incoming(record)
                raise
        return {'instance_dir': inst_dir}

    def do__migration_take_over(self, context, instance_uuid, migration):
        uuid = instance_uuid
        with self._lock(uuid):
            record = self.journal.get_instance(uuid)
            if record is None:
                raise exception.InstanceNotFound(uuid=uuid)
            if not record.get('incoming'):
                return public(record)           # taken over already
            if record['incoming'].get('cold'):  # cold migration's (migrate)
                return self.cold_take_over(context, record, migration)
            pause_points.pause('dest-take-over')
            try:
                self.driver.finish_incoming(self.planner.guest(record['spec']))
            except Exception:
                LOG.exception('%s: after-start work of the migrated guest '
                              'failed', uuid)
            self.journal.continue_sequence(uuid, migration['sequence'])
            start = (record.get('migration') or {}).get(
                'start_vm_state') or record['vm_state']
            vm_state, power = self._at_rest(
                record, states.end_vm_state(METHOD, start, False))
            self._set(record, context, METHOD + '.end', vm_state=vm_state,
                      task_state=None, power_state=power,
                      error=None, host=self.host, incoming=None,
                      migration=None, interrupted=None,
                      vnc=self._vnc(record['spec']['instance']))
        return public(record)

    def do__migration_rollback(self, context, instance_uuid, migration):
        uuid = instance_uuid
        with self._lock(uuid):
            record = self.journal.get_instance(uuid)
            if record is None:
                return None
            if not record.get('incoming'):
                raise exception.InstanceInvalidState(
                    'Instance %s is owned by this host: no rollback' % uuid)
            self._undo_incoming(record)
        return None

    def _clear_incoming(self, uuid):
        """Under the instance's lock, before a new incoming migration: a
        dead attempt's leftovers go; an instance owned here refuses it."""
        record = self.journal.get_instance(uuid)
        if record is not None and not record.get('incoming'):
            raise exception.MigrationPreCheckError(
                uuid=uuid, reason='the destination already has it')
        if record is not None:
            self._undo_incoming(record)

    def _undo_incoming(self, record):
        spec = record['spec']
        self.driver.rollback_incoming(
            spec['instance'], spec['network_info'], spec['block_device_info'],
            remove_files=record['incoming']['block'])
        self.journal.delete_instance(record['uuid'])
