"""The files of a resize inside one instance directory (mechanism).

The planner decides which files a resize touches (``plan.ResizePlan``);
these functions save, grow, restore and drop them. Every step is safe to
repeat, so an agent killed anywhere in a resize, revert or confirm finishes
it (or rolls it back) on the redelivery or at start.

Why hard links and renames, not copies, keep the old disks: before a disk
is replaced, its file gets a second name, ``<name>.pre-resize`` (a hard
link: the very inode the old guest used, with no data copied). The new disk
is a copy of that saved file, grown with ``qemu-img resize``, renamed over
``<name>``. From then on nothing opens the saved inode, so a revert puts
back exactly the bytes the guest left (one atomic rename, no copy that
could differ or fail half-way), and at every moment ``<name>`` is a whole
disk, the old or the new one. A qcow2 overlay's copy names the same cached
base as its backing file and ``qemu-img resize`` writes only the overlay:
a cached base is never modified. Confirm unlinks the saved names.
"""

import os

from compute_agent.virt import disks
from compute_agent.virt.plan import ResizePlan

COPY_TIMEOUT = disks.CONVERT_TIMEOUT


def _path(inst_dir, name):
    return disks.safe_join(inst_dir, name, field='disk.name')


def save(inst_dir, name):
    """Give ``name`` its saved name (kept if already there: the saved file
    is the one from before the resize)."""
    saved = _path(inst_dir, ResizePlan.saved_name(name))
    if not os.path.exists(saved):
        os.link(_path(inst_dir, name), saved)


def grow(inst_dir, disk):
    """``disk.name`` := a copy of its saved file, grown to ``disk.size_bytes``
    (never shrunk: a disk already larger keeps its size)."""
    path = _path(inst_dir, disk.name)
    saved = _path(inst_dir, ResizePlan.saved_name(disk.name))
    with disks.building(path) as tmp:
        # Sparse, and without the saved file's xattrs (libvirt's owner
        # records belong to that inode).
        disks.run(['cp', '--sparse=always', '--reflink=auto', saved, tmp],
                  path, timeout=COPY_TIMEOUT)
        size = disks.qemu_img_info(tmp, disk.fmt)['virtual-size']
        if disk.size_bytes > size:
            disks.run(['qemu-img', 'resize', '-q', '-f', disk.fmt, tmp,
                       str(disk.size_bytes)], path)


def restore(inst_dir, rplan):
    """Put back every saved file and remove the files the resize created."""
    for name in rplan.grow + rplan.replace:
        path = _path(inst_dir, name)
        saved = _path(inst_dir, ResizePlan.saved_name(name))
        if not os.path.exists(saved):
            continue        # never saved, so never replaced; or restored
        if os.path.exists(path) and os.path.samefile(saved, path):
            disks.unlink(saved)  # saved, not yet replaced (rename would no-op)
        else:
            os.rename(saved, path)
    for name in rplan.create:
        disks.unlink(_path(inst_dir, name))


def drop_saved(inst_dir, rplan):
    """Remove what only a revert would have needed."""
    for name in rplan.grow + rplan.replace:
        disks.unlink(_path(inst_dir, ResizePlan.saved_name(name)))
    for name in rplan.drop:
        disks.unlink(_path(inst_dir, name))
