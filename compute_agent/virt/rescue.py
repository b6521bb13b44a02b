"""Rescue and unrescue of a guest (mechanism; the rescue plan is the
planner's), mixed into ``LibvirtDriver``.

The guest's own definition is kept in ``unrescue.xml`` while it is rescued:
its presence is what "rescued" means on disk, so an agent restarted in the
middle still knows (``is_rescued``) and ``unrescue`` puts back exactly what
was defined before.
"""

import glob
import logging
import os

from compute_agent import exception
from compute_agent.virt import disks
from compute_agent.virt import guest
from compute_agent.virt.undo import Undo

LOG = logging.getLogger(__name__)

UNRESCUE_XML = 'unrescue.xml'


class Rescue:

    def prepare_rescue(self, plan):
        """Everything a rescue needs before the guest is touched.

        The guest's defined XML is kept in ``unrescue.xml`` (kept, not
        overwritten, when rescue is repeated) and the rescue plan's files are
        created (its config drive is ``disk.config.rescue``, so the
        instance's own ``disk.config`` stays untouched). On failure what this
        call made is removed and the guest is as it was.
        """
        instance = plan.instance
        inst_dir = self._dir(instance)
        saved = disks.safe_join(inst_dir, UNRESCUE_XML)
        wrote_saved = not os.path.exists(saved)
        undo = Undo()
        try:
            if wrote_saved:
                original = self._on_domain(instance,
                                           lambda d: d.XMLDesc(guest.INACTIVE_XML))
                disks.write_atomic(saved, original)
            self._create_files(plan, inst_dir, undo)
        except BaseException:
            for path in undo.files:
                disks.unlink(path)
            if wrote_saved:
                disks.unlink(saved)
            raise

    def rescue(self, plan):
        """Boot the prepared rescue plan; returns the devices chosen.

        On failure the original guest is restored (``unrescue``).
        """
        instance = plan.instance
        xml = plan.xml()
        try:
            self._on_domain(instance, guest.destroy_if_active)
            self._call(lambda c: c.defineXML(xml))
            self._boot(instance, plan.vifs)
        except BaseException:
            LOG.warning('Rescue of %s failed; restoring the guest', instance['uuid'])
            try:
                self.unrescue(instance, plan.vifs)
            except Exception:
                LOG.exception('Restoring %s after a failed rescue failed',
                              instance['uuid'])
            raise
        return dict(plan.devices)

    def unrescue(self, instance, vifs=()):
        """Put back the guest as defined before rescue; drop rescue files."""
        inst_dir = self._dir(instance)
        saved = disks.safe_join(inst_dir, UNRESCUE_XML)
        try:
            with open(saved) as f:
                xml = f.read()
        except FileNotFoundError:
            raise exception.InstanceInvalidState(
                'Cannot unrescue instance %s: it is not rescued (no %s)'
                % (instance['uuid'], UNRESCUE_XML)) from None
        self._on_domain(instance, guest.destroy_if_active)
        self._call(lambda c: c.defineXML(xml))
        self._boot(instance, vifs)
        for path in glob.glob(os.path.join(glob.escape(inst_dir), '*.rescue')):
            disks.unlink(disks.safe_join(inst_dir, os.path.basename(path)))
        disks.unlink(saved)

    def is_rescued(self, instance):
        return os.path.exists(disks.safe_join(self._dir(instance), UNRESCUE_XML))
