"""What the guest builder decides and the driver carries out.

A request is planned once, before anything is touched: the builder (policy,
pure) returns a ``GuestPlan`` holding every file to create under its final
name (rescue names included), the domain model, the device names, and the
VIFs and volumes as ``(driver, object)`` pairs. The driver (mechanism)
executes the plan; it never calls the builder nor edits the model.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True, init=False)
class DiskFile:
    """One file the driver must create under the instance directory.

    kind is one of:
      root       -- from image ``image_id``; qcow2 overlay (fmt 'qcow2') on
                    the cached image or a raw copy (fmt 'raw'); grown to
                    ``size_bytes`` when that is larger, never shrunk
      rescue     -- like root, from the rescue image
      iso        -- the cached image itself attached as a cdrom (a copy or
                    link named ``name``)
      kernel, ramdisk, kernel.rescue, ramdisk.rescue -- raw image copies
      ephemeral  -- blank disk of ``size_bytes``, formatted per
                    [DEFAULT] default_ephemeral_format; fmt 'qcow2' makes it
                    an overlay on a cached blank base of that size
      swap       -- blank disk of ``size_bytes`` prepared with mkswap (a
                    qcow2 overlay on a cached swap base when fmt is 'qcow2')
      config     -- the config drive ISO (label config-2)
    """
    name: str                 # file name inside the instance directory
    kind: str
    fmt: str = 'raw'          # 'qcow2' or 'raw'
    size_bytes: int = 0       # 0: the image's own size
    image_id: Optional[str] = None

    def __init__(self, name, kind, fmt='raw', size_bytes=0, image_id=None):
        # A frozen dataclass's own __init__ sets each field through
        # object.__setattr__ (0.8 us; the builder makes ~6 a guest).
        fields = self.__dict__
        fields['name'], fields['kind'], fields['fmt'] = name, kind, fmt
        fields['size_bytes'], fields['image_id'] = size_bytes, image_id


@dataclasses.dataclass
class ConfigDrive:
    """What goes into the config drive (the password is never shown)."""
    network_info: list
    admin_password: Optional[str] = dataclasses.field(default=None, repr=False)
    injected_files: list = dataclasses.field(default_factory=list, repr=False)


@dataclasses.dataclass
class GuestPlan:
    domain: object            # compute_agent.virt.config.Domain
    devices: dict             # {'root': 'vda', 'ephemeral': 'vdb', 'swap': 'vdc', ...}
    files: list               # [DiskFile], in creation order
    instance_dir: str         # <instances_path>/<name>
    instance: dict = None     # the validated instance
    vifs: list = dataclasses.field(default_factory=list)     # [(vif driver, vif)]
    volumes: list = dataclasses.field(default_factory=list)  # [(volume driver, bdm entry)]
    images: dict = dataclasses.field(default_factory=dict)   # {image id: image_meta} to fetch
    config_drive: Optional[ConfigDrive] = None
    rescue: bool = False

    def xml(self):
        return self.domain.to_xml()


# Where a file the resize replaces is kept until confirm or revert: inside
# the instance directory, so destroy removes it with the rest.
SAVED_SUFFIX = '.pre-resize'


@dataclasses.dataclass
class ResizePlan:
    """A resize of one guest, as the driver carries it out (docs:
    protocol-method-resize).

    ``old`` and ``new`` are the guest before and after; the file lists are
    names inside the instance directory, decided once when the resize is
    planned and kept in the journal record, so confirm and revert (also
    after an agent restart) act on exactly those files.
    """
    old: GuestPlan
    new: GuestPlan
    grow: list        # names saved, then copied from the saved file and grown
    replace: list     # names saved, then made afresh (blank disks of a new size)
    create: list      # names the old guest had none of (revert removes them)
    drop: list        # names only the old guest used (confirm removes them)
    old_spec: dict = None     # the stored request (records' spec) before
    new_spec: dict = None     # and after

    def files(self):
        """The plan's file lists, as the journal record keeps them."""
        return {'grow': list(self.grow), 'replace': list(self.replace),
                'create': list(self.create), 'drop': list(self.drop)}

    def new_file(self, name):
        """The new guest's ``DiskFile`` called ``name``."""
        return next(f for f in self.new.files if f.name == name)

    @staticmethod
    def saved_name(name):
        return name + SAVED_SUFFIX
