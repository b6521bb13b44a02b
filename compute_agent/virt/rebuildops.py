"""Rebuild on the host: a guest's files made anew, swapped in at once.

``prepare`` builds each file of a rebuild plan (``planner.rebuild``) beside
the one it replaces, as ``<name>.rebuild``: images are fetched and their
checksums verified through the cache as for a spawn, so a missing or
corrupt image fails here, with the guest untouched, and the staged files
are removed. ``swap`` then stops the guest (cleanly first, as a soft
reboot does: attached volumes and a preserved ephemeral disk keep what the
guest wrote), renames each staged file over the old one, defines the
planned domain (same uuid, name, NICs, filters, volumes) and starts it
when asked. Both are safe to repeat: the redelivery of a rebuild a crash
interrupted prepares again and swaps again.
"""

import logging
import os
import types

from compute_agent.virt import configdrive
from compute_agent.virt import disks

LOG = logging.getLogger(__name__)

SUFFIX = '.rebuild'
CONFIG_DRIVE = 'disk.config'


def kept_from_config_drive(driver, instance):
    """``(admin_pass, injected_files)`` on the instance's current config
    drive (``(None, [])`` when it has none)."""
    inst_dir = disks.instance_dir(driver.conf, instance['name'])
    try:
        return configdrive.read_kept(disks.safe_join(inst_dir, CONFIG_DRIVE))
    except Exception as exc:    # an unreadable drive never blocks a rebuild
        LOG.warning('Instance %s: the old config drive is unreadable (%s); '
                    'the new one keeps no password or files', instance['uuid'],
                    type(exc).__name__)
        return None, []


def prepare(driver, plan):
    """Build the plan's files as ``<name>.rebuild``; remove them on failure."""
    inst_dir = disks.instance_dir(driver.conf, plan.instance['name'], create=True)
    # What an interrupted attempt staged is made again from scratch: a new
    # hardlink renamed over an old one of the same file would do nothing.
    for f in plan.files:
        disks.unlink(disks.safe_join(inst_dir, f.name + SUFFIX, field='disk.name'))
    undo = types.SimpleNamespace(files=[])      # the paths made, in order
    try:
        driver._create_files(plan, inst_dir, undo, suffix=SUFFIX)
    except BaseException:
        for path in undo.files:
            disks.unlink(path)
        raise


def swap(driver, plan, start):
    """Stop the guest, put the staged files in place, define, maybe start."""
    instance = plan.instance
    inst_dir = disks.instance_dir(driver.conf, instance['name'], create=True)
    staged = [(disks.safe_join(inst_dir, f.name + SUFFIX, field='disk.name'),
               disks.safe_join(inst_dir, f.name, field='disk.name'))
              for f in plan.files]
    missing = [new for new, _ in staged if not os.path.exists(new)]
    if missing:     # prepare() made them all; never swap half a rebuild
        raise disks.DiskCreateError(path=missing[0], reason='not prepared')
    xml = plan.xml()
    if driver.exists(instance):
        driver.power_off(instance, driver.conf.libvirt.wait_soft_reboot_seconds)
    for new, old in staged:
        if os.path.exists(old) and os.path.samefile(new, old):
            os.unlink(new)      # e.g. the same cached kernel, hardlinked
        else:
            os.rename(new, old)
    disks.fsync_dir(inst_dir)
    driver._call(lambda c: c.defineXML(xml))
    LOG.info('Instance %s rebuilt on image %s', instance['uuid'],
             instance.get('image_ref'))
    if start:
        driver._boot(instance, plan.vifs)

