"""Making a plan's files in the instance directory, mixed into ``LibvirtDriver``.

Every file is made under a temporary name and renamed into place when
complete (``disks``), so a file present under its planned name is whole:
that is what lets a redelivered spawn trust what it finds.
"""

import dataclasses
import os

from compute_agent import exception
from compute_agent.virt import configdrive
from compute_agent.virt import disks
from compute_agent.virt import plan as plan_mod


class PlanFiles:
    """Needs ``self.conf`` and ``self.image_cache``."""

    def _files_complete(self, plan):
        try:
            inst_dir = disks.instance_dir(self.conf, plan.instance['name'])
        except exception.InvalidRequest:
            return False
        return all(os.path.exists(os.path.join(inst_dir, f.name))
                   for f in plan.files)

    def _make_dir(self, instance, undo):
        """The instance dir; ``undo.dir`` only when this call made it (its
        own mkdir succeeded), so a rollback never removes another's."""
        path = disks.instance_dir(self.conf, instance['name'])
        os.makedirs(os.path.dirname(path), mode=disks.DIR_MODE, exist_ok=True)
        try:
            os.mkdir(path, disks.DIR_MODE)
            undo.dir = path
        except FileExistsError:
            pass
        return disks.instance_dir(self.conf, instance['name'], create=True)

    def _create_files(self, plan, inst_dir, undo, suffix=''):
        """Create each planned file (images fetched through the cache),
        named as planned plus ``suffix``.

        The ``qemu-img`` of each overlay is started first and runs while
        this thread makes the other files (links, the config drive); then
        each is waited for. Every child has ended when this returns or
        raises; ``undo.files`` holds the files made.
        """
        files = [dataclasses.replace(f, name=f.name + suffix) if suffix
                 else f for f in plan.files]
        files.sort(key=lambda f: f.kind not in disks.CHILD_KINDS)  # stable
        # A redelivered request finds what its killed attempt was making.
        disks.remove_stale_temps(inst_dir, [f.name for f in files])
        started, error = [], None
        try:
            for f in files:
                started.append(self._start_file(plan, inst_dir, f))
        except BaseException as e:
            error = e
        for pending in started:
            try:
                undo.files.append(pending.wait())
            except BaseException as e:
                error = error or e
        if error is not None:
            raise error

    def _create_file(self, plan, inst_dir, f):
        return self._start_file(plan, inst_dir, f).wait()

    def _start_file(self, plan, inst_dir, f):
        """``disks.start_disk`` of one planned file (the config drive made
        here): a ``Pending`` or ``Done``."""
        path = disks.safe_join(inst_dir, f.name, field='disk.name')
        if f.kind == 'config':
            drive = plan.config_drive or plan_mod.ConfigDrive([])
            configdrive.build_config_drive(path, plan.instance, drive.network_info,
                                           drive.admin_password, drive.injected_files)
            return disks.Done(path)
        base = fmt = None
        if f.image_id:
            meta = plan.images.get(f.image_id) or {'id': f.image_id}
            base, fmt = self.image_cache.fetch(meta), meta.get('disk_format')
        return disks.start_disk(self.conf, inst_dir, f, base_path=base,
                                disk_format=fmt)
