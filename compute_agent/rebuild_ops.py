"""``rebuild`` (docs: protocol-method-rebuild), mixed into ``Manager``.

One row of ``states.TRANSITIONS``: task ``rebuilding`` from ``active``,
``stopped`` or ``error``; the guest ends as it was (running or stopped; one
in error is started, as nova revives it) and its vm_state is what its power
state then means.

``prepare`` plans the rebuilt guest from the stored request once
(``planner.rebuild``) and builds its new files beside the old ones: a
missing image, a checksum mismatch or bad input fails there, before the
guest is touched, and leaves its states as they were. The swap then stops
the guest, puts the new files in place and defines and (maybe) starts it.
The stored request takes the new image at the end, so later reboots,
rescue, destroy and volume operations follow it.

The new config drive carries the request's ``admin_password``; without one
it keeps the old drive's password and injected files, so a rebuild never
silently drops a password a guest was given. Whether the guest is started
is decided once, when it starts, and kept in the record (``rebuild``) in
the same commit as the task state: the redelivery of a rebuild a restart
interrupted (recovery found the guest stopped) starts it if the first
attempt would have.
"""

from compute_agent import states


class RebuildOperation:

    def do_rebuild(self, context, instance_uuid, image_meta, admin_password=None,
                   preserve_ephemeral=False):
        changes = {'rebuild': None}

        def mark(record):
            return {'rebuild': {'request_id': context.get('request_id'),
                                'start': self._rebuild_starts(record, context)}}

        def prepare(record):
            spec = record['spec']
            start = record['rebuild']['start']
            password, files = self.driver.config_drive_kept(spec['instance'])
            plan, changes['spec'] = self.planner.rebuild(
                spec, image_meta,
                admin_password if admin_password is not None else password,
                files, preserve_ephemeral)
            self.driver.prepare_rebuild(plan)
            changes['devices'] = dict(plan.devices)     # an iso root is a cdrom
            return plan, start

        def call(record, work):
            plan, start = work
            self.driver.rebuild(plan, start)
        record = self._run(context, 'rebuild', instance_uuid, call, prepare,
                           end_changes=changes, start_changes=mark)
        return self._refresh_vnc(record, context)

    @staticmethod
    def _rebuild_starts(record, context):
        """Start the rebuilt guest unless it was stopped; the redelivery of
        an interrupted rebuild decides as the first attempt did."""
        mark = record.get('rebuild') or {}
        if mark and mark.get('request_id') == context.get('request_id'):
            return mark['start']
        return record['vm_state'] != states.STOPPED

