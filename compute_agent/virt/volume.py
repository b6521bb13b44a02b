"""Loading volume drivers: ``driver_volume_type`` -> a driver object.

The drivers live in ``compute_agent.volume`` (one module per type) and are
found through the entry point group ``compute_agent.volume_drivers`` by the
one plugin loader (``plugins.py``): the accepted types are the installed
plugins, so a third party adds one by installing a package that registers
it. ``get_config`` is pure (it only describes the disk); host-side steps
belong in ``connect``/``disconnect``.
"""

from compute_agent import plugins
from compute_agent.volume.base import VolumeDriver, serial_for, volume_id_of  # noqa: F401
from compute_agent.volume.iscsi import IscsiVolumeDriver  # noqa: F401
from compute_agent.volume.local import LocalVolumeDriver  # noqa: F401
from compute_agent.volume.nbd import NbdVolumeDriver  # noqa: F401
from compute_agent.volume.nfs import NfsVolumeDriver  # noqa: F401
from compute_agent.volume.rbd import RbdVolumeDriver  # noqa: F401

NAMESPACE = plugins.VOLUME_DRIVERS
#: The field a volume type comes from, when the caller does not say which
#: mapping entry (``block_device_info.block_device_mapping[i]...``).
FIELD = 'block_device_info.block_device_mapping.connection_info.driver_volume_type'


def load(conf, volume_type, field=FIELD, connection=None):
    """The volume driver for ``volume_type`` (one per conf, cached).

    ``connection`` (the agent's libvirt ``Connection``) is kept by the
    driver for its host side (secrets); pure planning passes none.
    InvalidRequest on ``field`` when no such driver is installed;
    ``plugins.PluginLoadFailed`` when it is installed but does not load.
    """
    driver = plugins.load(NAMESPACE, volume_type, field, conf)
    if connection is not None and getattr(driver, 'connection', None) is None:
        driver.connection = connection
    return driver
