"""Cold migration (``migrate``, docs: protocol-method-migrate), mixed into
``Manager``.

The source stops the guest, checks with the destination as a live
migration does (``_migration_check``, block mode), exports the disks
(``virt.coldmigration``) and calls ``_cold_migration_receive``: the
destination copies them, starts the guest on the new flavor and takes
ownership in one step (vm_state ``resized``, its own ``host``, the
sequence going on from the source's). The source then undefines the
stopped domain, releases its VIFs, filters and volumes and forgets the
record; its instance files stay as the saved state of the resize.

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
    everything of the guest and forgets it.
"""

import logging

from compute_agent import exception
from compute_agent import states
from compute_agent.conf import libvirt as libvirt_conf
from compute_agent.migration_ops import _checked_spec, _refusal
from compute_agent.records import public
from compute_agent.rpc import peer as peer_mod

LOG = logging.getLogger(__name__)
METHOD = 'migrate'


class ColdMigrationOperations:

    # -- the source ----------------------------------------------------------------
    def do_migrate(self, context, instance_uuid, dest_host, flavor=None):
        uuid, request_id = instance_uuid, context.get('request_id')
        # The same memo as live migration's (manager: _migrated).
        done = self._migrated.get(uuid)
        if done and done[0] == request_id and self.journal.get_instance(uuid) is None:
            return done[1]      # its redelivery: the outcome
        with self._lock(uuid):
            record = self._get(uuid)
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
            self._set(record, context, METHOD + '.start',
                      task_state=states.TRANSITIONS[METHOD].task,
                      task_request_id=context.get('request_id'), error=None)
            plan = self.planner.guest(spec)
            try:
                self.driver.power_off(spec['instance'],
                                      self.conf.libvirt.wait_soft_reboot_seconds)
                address = libvirt_conf.migration_address(self.conf)
                with self.driver.export_disks(plan, address) as (key, exports):
                    outcome = peer.call(
                        '_cold_migration_receive', uuid, record=record,
                        flavor=new_flavor, source=self.host, address=address,
                        tls_secret=key, exports=exports,
                        sequence=self.journal.instance_sequence(uuid) + 1)
            except Exception as exc:
                LOG.exception('%s: cold migration failed; the guest starts '
                              'here again', uuid)
                err = exc if isinstance(exc, exception.MigrationError) else \
                    exception.MigrationError(uuid=uuid, reason=str(exc))
                try:
                    self.driver.power_on(spec['instance'], plan.vifs)
                    self._set(record, context, METHOD + '.error', task_state=None,
                              power_state=self._power(record),
                              error=err.to_dict())
                except Exception:
                    self._fail(record, context, METHOD, err)
                raise err from None
        try:
            self.driver.release_cold_source(spec['instance'],
                                            spec['network_info'],
                                            spec['block_device_info'])
        except Exception:
            LOG.exception('%s: releasing the source after the migration '
                          'failed', uuid)
        self._delete(uuid)
        self._checked.pop(uuid, None)
        self._migrated[uuid] = (request_id, outcome)
        LOG.info('%s: cold-migrated to %s', uuid, dest_host)
        return outcome

    def _cold_pre_check(self, peer, record, flavor):
        """``_migration_check`` in block mode, for the memory of the new
        flavor when it is larger."""
        facts = self.driver.migration_facts(record['spec']['instance'])
        facts['memory_mb'] = max(facts['memory_mb'],
                                 int(flavor.get('memory_mb') or 0))
        probe = self.driver.write_probe()
        try:
            return peer.call('_migration_check', record['uuid'], facts=facts,
                             spec=record['spec'], block=True, probe=probe,
                             source=self.host)
        except peer_mod.PeerUnavailable as exc:
            raise exception.MigrationPreCheckError(
                uuid=record['uuid'], reason=str(exc)) from None
        finally:
            self.driver.remove_probe(probe)

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
        and reported by this host. Repeatable."""
        uuid, m = instance_uuid, migration
        with self._lock(uuid):
            record = self.journal.get_instance(uuid)
            if record is not None and not record.get('incoming'):
                return public(record)           # restored already
            spec = _checked_spec(m['spec'])
            record = dict(m['record'], spec=spec, host=self.host,
                          incoming={'source': m['source'], 'block': True},
                          resize=None, devices=m['devices'])
            self.journal.save_instance(uuid, record)         # not reported
            self.driver.restart_cold_source(self.planner.guest(spec))
            self.journal.continue_sequence(uuid, m['sequence'])
            self._set(record, context, 'revert_resize.end',
                      vm_state=states.ACTIVE, task_state=None,
                      power_state=self._power(record), error=None,
                      incoming=None, interrupted=None,
                      vnc=self._vnc(spec['instance']))
        return public(record)

    # -- the destination -------------------------------------------------------------
    def do__cold_migration_receive(self, context, instance_uuid, migration):
        uuid, m = instance_uuid, migration
        source = dict(m['record'], spec=_checked_spec(m['record']['spec']))
        if source['spec']['instance']['uuid'] != uuid or source.get('uuid') != uuid:
            raise exception.InvalidRequest('migration.record.uuid',
                                           'is not instance_uuid', uuid=uuid)
        with self._lock(uuid):
            if self.journal.get_instance(uuid) is not None:
                raise exception.MigrationPreCheckError(
                    uuid=uuid, reason='the destination already has it')
            old_spec = source['spec']
            rplan = self.planner.resize(old_spec,
                                        old_spec['instance']['flavor'],
                                        m['flavor'])
            self.driver.receive_cold(rplan, m['address'], m['tls_secret'],
                                     m['exports'])
            record = dict(
                source, host=self.host, spec=rplan.new_spec,
                devices=dict(rplan.new.devices), incoming=None,
                resize={'old_flavor': old_spec['instance']['flavor'],
                        'new_flavor': m['flavor'], 'host': m['source'],
                        'files': {'grow': [], 'replace': [], 'drop': [],
                                  'create': [f.name for f in rplan.new.files]},
                        'source_spec': old_spec,
                        'source_devices': source.get('devices')})
            self.journal.save_instance(uuid, record)         # not reported
            self.journal.continue_sequence(uuid, m['sequence'])
            self._set(record, context, METHOD + '.end',
                      vm_state=states.RESIZED, task_state=None,
                      power_state=self._power(record), error=None,
                      interrupted=None, vnc=self._vnc(rplan.new.instance))
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
        uuid = instance_uuid
        with self._lock(uuid):
            record = self._get(uuid)
            self._check('revert_resize', 'revert_resize', uuid, record, context)
            self._set(record, context, 'revert_resize.start',
                      task_state=states.TRANSITIONS['revert_resize'].task)
            saved, spec = record['resize'], record['spec']
            # Stopped (not removed) first: the old guest has the same MACs
            # and addresses, and this copy must stay until the source owns
            # the instance again.
            self.driver.stop_cold_copy(spec['instance'])
            source_record = {k: v for k, v in record.items()
                             if k not in ('resize', 'spec', 'devices')}
            try:
                with peer_mod.Peer(self.conf, saved['host'], context) as peer:
                    outcome = peer.call(
                        '_cold_migration_restore', uuid, record=source_record,
                        spec=saved['source_spec'],
                        devices=saved.get('source_devices') or {},
                        source=self.host,
                        sequence=self.journal.instance_sequence(uuid) + 1)
            except Exception as exc:
                LOG.exception('%s: the source did not take the guest back; '
                              'it runs here again', uuid)
                err = exc if isinstance(exc, exception.MigrationError) else \
                    exception.MigrationError(uuid=uuid, reason=str(exc))
                try:
                    self.driver.power_on(spec['instance'],
                                         self.planner.vifs(spec))
                    self._set(record, context, 'revert_resize.error',
                              task_state=None, power_state=self._power(record),
                              error=err.to_dict())
                except Exception:
                    self._fail(record, context, 'revert_resize', err)
                raise err from None
            self.journal.delete_instance(uuid)
            self._checked.pop(uuid, None)
        try:
            self.driver.remove_cold_copy(spec['instance'], spec['network_info'],
                                         spec['block_device_info'])
        except Exception:
            LOG.exception('%s: removing the reverted copy here failed', uuid)
        return outcome
