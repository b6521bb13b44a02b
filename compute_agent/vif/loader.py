"""Picks the VIF driver for a VIF's ``type`` from the installed plugins."""

import threading

from stevedore import driver as stevedore_driver
from stevedore import extension

from compute_agent import exception

NAMESPACE = 'compute_agent.vif_drivers'


class VifDrivers:
    """Loads each driver once, on first use; unknown types are errors."""

    def __init__(self, conf):
        self.conf = conf
        self._drivers = {}
        self._lock = threading.Lock()

    def known_types(self):
        return sorted(extension.ExtensionManager(NAMESPACE).names())

    def get(self, vif_type, field='network_info.type'):
        with self._lock:
            if vif_type not in self._drivers:
                try:
                    mgr = stevedore_driver.DriverManager(
                        NAMESPACE, vif_type, invoke_on_load=True,
                        invoke_args=(self.conf,))
                except Exception:
                    raise exception.InvalidRequest(
                        field, 'unknown VIF type %r (known: %s)' % (
                            vif_type, ', '.join(self.known_types()))) from None
                self._drivers[vif_type] = mgr.driver
            return self._drivers[vif_type]

    def for_network_info(self, network_info):
        """(driver, vif) pairs; every type is checked before any is used."""
        return [(self.get(vif.get('type'), 'network_info[%d].type' % i), vif)
                for i, vif in enumerate(network_info or ())]
