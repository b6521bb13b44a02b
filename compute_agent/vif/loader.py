"""Picks the VIF driver for a VIF's ``type`` from the installed plugins."""

import logging
import threading

from stevedore import driver as stevedore_driver
from stevedore import extension

from compute_agent import exception

LOG = logging.getLogger(__name__)

NAMESPACE = 'compute_agent.vif_drivers'


def _reraise(_manager, _entry_point, exc):
    # Without this stevedore logs a plugin's import/init error and reports
    # "no driver found", hiding the cause.
    raise exc


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
                if not isinstance(vif_type, str) or not vif_type:
                    raise exception.InvalidRequest(
                        field, 'a VIF type is required (known: %s)' % ', '.join(
                            self.known_types()))
                try:
                    mgr = stevedore_driver.DriverManager(
                        NAMESPACE, vif_type, invoke_on_load=True,
                        invoke_args=(self.conf,),
                        on_load_failure_callback=_reraise)
                except Exception as e:
                    known = self.known_types()
                    if vif_type in known:   # installed, but broken
                        LOG.exception('VIF driver %r failed to load', vif_type)
                        reason = 'VIF driver %r failed to load: %s' % (vif_type, e)
                    else:
                        reason = 'unknown VIF type %r (known: %s)' % (
                            vif_type, ', '.join(known))
                    raise exception.InvalidRequest(field, reason) from None
                self._drivers[vif_type] = mgr.driver
            return self._drivers[vif_type]

    def for_network_info(self, network_info):
        """(driver, vif) pairs; every type is checked before any is used."""
        return [(self.get(vif.get('type') if isinstance(vif, dict) else None,
                          'network_info[%d].type' % i), vif)
                for i, vif in enumerate(network_info or ())]

    def validate_all(self, network_info):
        """(driver, vif) pairs after every VIF passed its driver's checks.

        Raises InvalidRequest for an unknown type and VifPlugFailed for a bad
        VIF or two VIFs sharing a device name or MAC, before anything is done.
        """
        pairs = self.for_network_info(network_info)
        devnames, macs = {}, {}
        for drv, vif in pairs:
            drv.validate(vif)
            for seen, key, what in ((devnames, drv.devname(vif), 'devname'),
                                    (macs, vif['address'].lower(), 'address')):
                if key in seen:
                    raise exception.VifPlugFailed(
                        vif_id=vif['id'], reason='%s %s is also used by VIF %s' % (
                            what, key, seen[key]))
                seen[key] = vif['id']
        return pairs

    def plug_all(self, instance, network_info):
        """Plug every VIF (before a start); all or nothing.

        All VIFs are validated first. If one fails to plug, it and the VIFs
        plugged before it are unplugged (in reverse order, errors logged) and
        the original error is raised. Returns the (driver, vif) pairs.
        """
        pairs = self.validate_all(network_info)
        done = []
        for drv, vif in pairs:
            try:
                done.append((drv, vif))   # the failing one may be half done
                drv.plug(instance, vif)
            except BaseException as e:
                self._rollback(instance, done)
                if isinstance(e, exception.AgentError) or not isinstance(e, Exception):
                    raise
                raise exception.VifPlugFailed(vif_id=vif['id'], reason=str(e)) from e
        return pairs

    def post_start_all(self, instance, network_info):
        """Call every driver's post_start hook (right after a domain start)."""
        for drv, vif in self.for_network_info(network_info):
            try:
                drv.post_start(instance, vif)
            except exception.AgentError:
                raise
            except Exception as e:
                raise exception.VifPlugFailed(vif_id=vif.get('id'), reason=str(e)) from e

    def unplug_all(self, instance, network_info):
        """Unplug every VIF in reverse order; the first error is raised last.

        A VIF that fails to unplug does not stop the others.
        """
        first = None
        for drv, vif in reversed(self.for_network_info(network_info)):
            try:
                drv.unplug(instance, vif)
            except Exception as e:
                LOG.warning('Unplugging VIF %s of instance %s failed: %s',
                            vif.get('id'), instance.get('uuid'), e)
                if first is None:
                    first = e
        if first is not None:
            raise first

    @staticmethod
    def _rollback(instance, done):
        for drv, vif in reversed(done):
            try:
                drv.unplug(instance, vif)
            except Exception:
                LOG.exception('Rollback: unplugging VIF %s of instance %s failed',
                              vif.get('id'), instance.get('uuid'))
