"""``resize``, ``confirm_resize`` and ``revert_resize`` on this host (docs:
protocol-method-resize), mixed into ``Manager``.

Each is a row of ``states.TRANSITIONS``; resize has two steps (task states
``resize_migrating``: the disks, then ``resize_finish``: the guest on the
new flavor). What a revert needs is kept in the journal record under the
private key ``resize`` before the guest is touched::

    {"old_flavor": {...}, "new_flavor": {...}, "host": <this host>,
     "files": {"grow": [...], "replace": [...], "create": [...], "drop": [...]}}

so an agent restarted anywhere between ``resize`` and its confirm or
revert still has both (the record's ``spec`` holds the flavor in force).
``host`` says where the saved disks are: cold migration (``migrate``) will
end ``resized`` on another host with the same key, its ``host`` naming the
source, and revert/confirm there ask that agent to restart or drop its
copy instead of touching local files.
"""

import logging

from compute_agent import exception
from compute_agent import records

LOG = logging.getLogger(__name__)


class ResizeOperations:

    def do_resize(self, context, instance_uuid, flavor):
        changes = {}

        def prepare(record):
            spec = record['spec']
            return self.planner.resize(spec, spec['instance']['flavor'], flavor)

        def disks(record, rplan):
            # Journal first: recovery must know what to put back.
            self._set(record, context, 'resize.start', resize={
                'old_flavor': record['spec']['instance']['flavor'],
                'new_flavor': flavor, 'host': self.host,
                'files': rplan.files()})
            self._rolled_back(record, context, rplan, self.driver.resize_disks)

        def finish(record, rplan):
            self._rolled_back(record, context, rplan, self.driver.finish_resize)
            changes.update(spec=rplan.new_spec, devices=dict(rplan.new.devices))
        record = self._run(context, 'resize', instance_uuid, [disks, finish],
                           prepare, end_changes=changes)
        return self._refresh_vnc(record, context)

    def do_confirm_resize(self, context, instance_uuid):
        def confirm(record, rplan):
            # Cold migration (cold_migration_ops): the source keeps the copy.
            if record['resize'].get('host', self.host) != self.host:
                self.cold_confirm(record, context)
            self.driver.confirm_resize(rplan)
        record = self._run(
            context, 'confirm_resize', instance_uuid, confirm,
            self._resize_plan, end_changes={'resize': None})
        return records.public(record)

    def do_revert_resize(self, context, instance_uuid):
        # Cold migration (cold_migration_ops): the source takes the guest back.
        # No record: the redelivery of a finished cold revert (its outcome).
        record = self.journal.get_instance(instance_uuid)
        saved = (record or {}).get('resize')
        if record is None or (saved and saved.get('host', self.host) != self.host):
            return self.cold_revert(context, instance_uuid)
        changes = {'resize': None}

        def revert(record, rplan):
            self.driver.revert_resize(rplan)
            changes.update(spec=rplan.old_spec, devices=dict(rplan.old.devices))
        record = self._run(context, 'revert_resize', instance_uuid, revert,
                           self._resize_plan, end_changes=changes)
        return self._refresh_vnc(record, context)

    def recover_resize(self, action, record):
        """At start: finish an interrupted revert or confirm, or roll back
        an interrupted resize (``states.RECOVERY``); the record's changes."""
        if not record.get('resize'):
            return {}       # stopped before anything was saved or touched
        rplan = self._resize_plan(record)
        if action == 'confirm_resize':
            # Cold migration: the source's kept copy (best effort).
            self.forget_cold_source(record, {})
            self.driver.confirm_resize(rplan)
            return {'resize': None}
        self.driver.revert_resize(rplan)
        return {'resize': None, 'spec': rplan.old_spec,
                'devices': dict(rplan.old.devices)}

    # -- helpers -----------------------------------------------------------------

    def _resize_plan(self, record):
        """The plan of the resize the record keeps (for confirm, revert)."""
        saved = record.get('resize')
        if not saved:
            raise exception.InstanceInvalidState(
                action='resize', uuid=record['uuid'], vm_state=record['vm_state'],
                task_state=record['task_state'])
        return self.planner.resize(record['spec'], saved['old_flavor'],
                                   saved['new_flavor'], files=saved['files'])

    def _rolled_back(self, record, context, rplan, step):
        """Run a resize step; when it fails put the old guest back (the
        failure is still reported: vm_state error, see docs:
        protocol-method-resize)."""
        try:
            step(rplan)
        except Exception:
            try:
                self.driver.revert_resize(rplan)
                self._set(record, context, 'resize.error', resize=None)
            except Exception:       # the saved state stays for destroy
                LOG.exception('%s: putting back the guest after a failed '
                              'resize failed', record['uuid'])
            raise
