"""The 1.1 ``snapshot`` operation (docs: protocol-method-snapshot).

Mixed into ``Manager``; one row of ``states.TRANSITIONS``: task
``image_snapshot`` while the root disk is copied (``driver.snapshot_copy``,
mechanism in ``virt/snapshot.py``), then ``image_uploading`` while the copy
goes into the image store (``images/store.py``), then back to the vm_state
it started from, power unchanged: the guest is never stopped. ``prepare``
refuses an ``image_id`` the store already has (or a store that cannot take
it) before anything is written; a failure later leaves the guest as it was
and the store without the image. A running guest the copy pauses is marked
in the record first, so that a restart resumes it (``recover_snapshot``).
The result is the new image's ``image_meta``, not the record.
"""

import contextlib

from compute_agent import exception
from compute_agent.images import store as store_mod

DEFAULT_ROOT = 'vda'
# The journal record's mark: the snapshot paused (or is about to pause) the guest.
PAUSED_MARK = 'snapshot_paused'


class SnapshotOperations:

    @property
    def image_store(self):
        """The writer of ``[images] image_store_url`` (made on first use)."""
        writer = getattr(self, '_image_store', None)
        if writer is None:
            writer = self._image_store = store_mod.for_conf(self.conf)
        return writer

    def do_snapshot(self, context, instance_uuid, image_id, disk_format='qcow2',
                    quiesce=None):
        result = {}

        def prepare(record):
            self.image_store.check_new(image_id)

        def mark_paused(record):
            # Saved before the guest is paused: an agent that dies while it
            # is paused resumes it at restart (recover_snapshot).
            self._set(record, context, 'snapshot', **{PAUSED_MARK: True})

        # The temporary copy outlives the first step: the upload reads it.
        with contextlib.ExitStack() as copy:
            def snapshot(record, _plan):
                try:
                    result['path'] = copy.enter_context(self.driver.snapshot_copy(
                        record['spec']['instance'], self._root(record), image_id,
                        disk_format, quiesce, on_pause=lambda: mark_paused(record)))
                finally:    # resumed (or the error says why not)
                    if record.get(PAUSED_MARK):
                        self._set(record, context, 'snapshot', **{PAUSED_MARK: None})

            def upload(record, _plan):
                result['image_meta'] = self.image_store.put(
                    image_id, result['path'], disk_format)
            self._run(context, 'snapshot', instance_uuid, [snapshot, upload],
                      prepare, keep_on_failure=True,
                      start_changes=lambda record: {PAUSED_MARK: None})
        if 'image_meta' not in result:      # not run: nothing was written
            raise exception.ImageUploadFailed(image_id=image_id,
                                              reason='the snapshot did not run')
        return result['image_meta']

    def recover_snapshot(self, record):
        """After a restart (``states.RECOVERY``): cancel the copy, resume the
        guest if the snapshot had paused it, drop the temporary files; the
        record changes to save."""
        self.driver.abort_snapshot(record['spec']['instance'], self._root(record),
                                   paused=bool(record.get(PAUSED_MARK)))
        return {PAUSED_MARK: None}

    @staticmethod
    def _root(record):
        """The guest's root disk name (``devices.root``)."""
        return (record.get('devices') or {}).get('root') or DEFAULT_ROOT
