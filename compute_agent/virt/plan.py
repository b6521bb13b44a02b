"""What the guest builder decides and the driver carries out.

The builder (policy, pure) returns a ``GuestPlan``; the driver (mechanism)
creates the files it lists, plugs the VIFs and defines the domain. Keeping
the file list here means the choice of disks is made in exactly one place.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
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
                    [DEFAULT] default_ephemeral_format
      swap       -- blank disk of ``size_bytes`` prepared with mkswap
      config     -- the config drive ISO (label config-2)
    """
    name: str                 # file name inside the instance directory
    kind: str
    fmt: str = 'raw'          # 'qcow2' or 'raw'
    size_bytes: int = 0       # 0: the image's own size
    image_id: Optional[str] = None


@dataclasses.dataclass
class GuestPlan:
    domain: object            # compute_agent.virt.config.Domain
    devices: dict             # {'root': 'vda', 'ephemeral': 'vdb', 'swap': 'vdc', ...}
    files: list               # [DiskFile], in creation order
    instance_dir: str         # <instances_path>/<name>
