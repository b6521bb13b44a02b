"""The 1.1 operations that change a running guest's devices or filters.

``attach_volume``, ``detach_volume``, ``attach_interface``,
``detach_interface`` and ``update_security_rules`` (docs:
protocol-methods-1-1), mixed into ``Manager``. Each is one row of
``states.TRANSITIONS``: a task state while it runs, then back to the
vm_state it started from. ``prepare`` checks the request against the record
before anything is touched; when the work itself fails the guest keeps the
device (or rules) it had, so the states are as they were and only the
``.error`` report and the record's ``error`` say why. The record's volumes
and VIFs are its stored request's (``records.py``), updated with the end
state, so reboots, rescue and destroy follow every change.
"""

from compute_agent import exception
from compute_agent import records
from compute_agent import rules


class DeviceOperations:

    def do_attach_volume(self, context, instance_uuid, volume_id,
                         connection_info, mountpoint=None):
        def prepare(record):
            self.driver.check_volume_type(connection_info)
            if records.find_mapping(record, volume_id) is not None:
                raise exception.InvalidRequest(
                    'volume_id', 'is already attached to this instance',
                    uuid=instance_uuid)
            dev = self.driver.pick_volume_device(
                record['spec']['instance'], mountpoint, volume_id=volume_id,
                claimed=[v['device'] for v in records.volumes_of(record)])
            return {'mount_device': '/dev/' + dev, 'volume_id': volume_id,
                    'connection_info': connection_info}

        def attach(record, bdm):
            self.driver.attach_volume(record['spec']['instance'], bdm)
            return _with_mappings(record, records.mappings(record) + [bdm])
        return self._device_op(context, 'attach_volume', instance_uuid,
                               prepare, attach)

    def do_detach_volume(self, context, instance_uuid, volume_id):
        def prepare(record):
            # One attached without an id is known by its bare device name.
            bdm = records.find_mapping(record, rules.strip_dev(volume_id))
            if bdm is None:
                raise exception.VolumeNotFound(uuid=instance_uuid,
                                               volume_id=volume_id)
            return bdm

        def detach(record, bdm):
            self.driver.detach_volume(record['spec']['instance'], bdm)
            return _with_mappings(record, [b for b in records.mappings(record)
                                           if b is not bdm])
        return self._device_op(context, 'detach_volume', instance_uuid,
                               prepare, detach)

    def do_attach_interface(self, context, instance_uuid, vif):
        def prepare(record):
            self.driver.check_attach_interface(
                record['spec']['network_info'] or [], vif)
            return vif

        def attach(record, vif):
            self.driver.attach_interface(record['spec']['instance'], vif)
            return _with_vifs(record, list(record['spec']['network_info'] or ())
                              + [vif])
        return self._device_op(context, 'attach_interface', instance_uuid,
                               prepare, attach)

    def do_detach_interface(self, context, instance_uuid, vif_id):
        def prepare(record):
            return _vif(record, vif_id)

        def detach(record, vif):
            self.driver.detach_interface(record['spec']['instance'], vif)
            return _with_vifs(record, [v for v in record['spec']['network_info']
                                       if v is not vif])
        return self._device_op(context, 'detach_interface', instance_uuid,
                               prepare, detach)

    def do_update_security_rules(self, context, instance_uuid, vif_id, rules):
        def update(record, _work):
            spec = record['spec']
            return _with_vifs(record, self.driver.update_security_rules(
                spec['instance'], spec['network_info'], vif_id, rules))
        return self._device_op(context, 'update_security_rules', instance_uuid,
                               lambda record: _vif(record, vif_id), update)

    def _device_op(self, context, method, uuid, prepare, call):
        """Run it through the table; ``call`` returns the new ``spec``."""
        changes = {}

        def run(record, work):
            changes['spec'] = call(record, work)
        record = self._run(context, method, uuid, run, prepare,
                           end_changes=changes, keep_on_failure=True)
        return records.public(record)


def _vif(record, vif_id):
    vif = records.find_vif(record, vif_id)
    if vif is None:
        raise exception.InterfaceNotFound(uuid=record['uuid'], vif_id=vif_id)
    return vif


def _with_mappings(record, mappings):
    spec = dict(record['spec'])
    spec['block_device_info'] = dict(spec.get('block_device_info') or {},
                                     block_device_mapping=mappings)
    return spec


def _with_vifs(record, vifs):
    return dict(record['spec'], network_info=vifs)
