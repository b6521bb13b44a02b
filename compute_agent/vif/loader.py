"""Picks the VIF driver for a VIF's ``type`` from the installed plugins.

Loading goes through ``compute_agent.plugins`` (one loader for every plugin
kind); this module adds what a whole ``network_info`` needs: every type and
every VIF checked before anything is plugged, rollback, reverse unplug.
"""

import logging

from compute_agent import exception
from compute_agent import plugins

LOG = logging.getLogger(__name__)

NAMESPACE = plugins.VIF_DRIVERS


class VifDrivers:
    """The VIF drivers of one agent (one ``conf``); unknown types are errors.

    ``drivers`` maps a VIF type to a driver object and overrides the entry
    point lookup for that type (tests, embedding).
    """

    def __init__(self, conf, drivers=None):
        self.conf = conf
        self._drivers = dict(drivers or {})

    def known_types(self):
        return sorted(set(plugins.names(NAMESPACE)) | set(self._drivers))

    def get(self, vif_type, field='network_info.type'):
        """The driver for ``vif_type``; InvalidRequest on ``field`` if unknown."""
        if isinstance(vif_type, str) and vif_type in self._drivers:
            return self._drivers[vif_type]
        return plugins.load(NAMESPACE, vif_type, field, self.conf)

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
        """Validate every VIF, then plug them all (see ``plug``)."""
        return self.plug(instance, self.validate_all(network_info))

    def plug(self, instance, pairs):
        """Plug (driver, vif) pairs (before a start); all or nothing.

        If one fails to plug, it and the VIFs plugged before it are
        unplugged (in reverse order, errors logged) and the original error
        is raised. Returns the pairs.
        """
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
        self.post_start(instance, self.for_network_info(network_info))

    def post_start(self, instance, pairs):
        """Call every driver's post_start hook (right after a domain start)."""
        for drv, vif in pairs:
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
