"""Loading volume drivers: ``driver_volume_type`` -> a driver object.

The drivers live in ``compute_agent.volume`` (one module per type) and are
found through the entry point group ``compute_agent.volume_drivers``, so a
third party adds a type by installing a package that registers it.
"""

from stevedore import driver as stevedore_driver

from compute_agent import exception
from compute_agent.volume.base import VolumeDriver, serial_for, volume_id_of  # noqa: F401
from compute_agent.volume.iscsi import IscsiVolumeDriver  # noqa: F401
from compute_agent.volume.local import LocalVolumeDriver  # noqa: F401
from compute_agent.volume.nbd import NbdVolumeDriver  # noqa: F401
from compute_agent.volume.nfs import NfsVolumeDriver  # noqa: F401
from compute_agent.volume.rbd import RbdVolumeDriver  # noqa: F401

NAMESPACE = 'compute_agent.volume_drivers'
FIELD = 'block_device_info.block_device_mapping.connection_info.driver_volume_type'


def load(conf, volume_type, connection=None, field=FIELD):
    """The driver for ``volume_type``; ``connection`` for the host side."""
    kwds = {'connection': connection} if connection is not None else {}
    try:
        mgr = stevedore_driver.DriverManager(
            NAMESPACE, volume_type, invoke_on_load=True, invoke_args=(conf,),
            invoke_kwds=kwds)
    except Exception:
        raise exception.InvalidRequest(
            field, 'no volume driver for %r' % volume_type) from None
    return mgr.driver
