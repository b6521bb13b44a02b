"""The instance manager: the state machine between the wire and the driver.

It implements the RPC dispatcher interface (``rpc/dispatcher.py``): requests
arrive validated and serialized per instance; the manager checks the
operation makes sense in the instance's state (``states.TRANSITIONS``), moves
the record through its states, calls the driver, and reports every change of
(vm_state, task_state, power_state) with a per-instance sequence number.
Records live in the journal, so they survive restarts; ``recover()``
reconciles them with libvirt at start.
"""

import collections
import datetime
import logging
import threading
import time

from compute_agent import exception
from compute_agent import states
from compute_agent import validation
from compute_agent import version
from compute_agent.volume.base import volume_id_of

LOG = logging.getLogger(__name__)

PUBLIC_KEYS = ('uuid', 'name', 'host', 'vm_state', 'task_state', 'power_state',
               'devices', 'vnc', 'created_at', 'updated_at', 'error', 'volumes',
               'vifs')
# Requests that may run beside anything else (no per-instance queue).
UNKEYED = frozenset(('list_instances', 'get_host_stats', 'ping'))


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def public(record):
    return dict({k: record.get(k) for k in PUBLIC_KEYS}, volumes=volumes_of(record),
                vifs=vifs_of(record))


def _error_of(exc):
    if isinstance(exc, exception.AgentError):
        return exc.to_dict()
    return {'class': type(exc).__name__, 'message': str(exc)}


class Manager:
    def __init__(self, conf, driver, journal, notifier):
        self.conf = conf
        self.driver = driver
        self.journal = journal
        self.notifier = notifier
        self.host = conf.host
        self._started = time.monotonic()
        self._locks = collections.defaultdict(threading.RLock)
        self._locks_guard = threading.Lock()

    # --- the dispatcher interface ------------------------------------------

    def validate(self, method, args, version_):
        """Schema checks, plus for spawn the builder's and VIF drivers' own
        (a dry run, no side effects): an invalid spawn creates nothing."""
        args = validation.validate(method, args)
        if method == 'spawn':
            try:
                self.driver.check_spawn(args['instance'], args['image_meta'],
                                        args['network_info'],
                                        args['block_device_info'])
            except exception.VifPlugFailed as e:
                raise exception.InvalidRequest(
                    'network_info', e.message,
                    uuid=args['instance']['uuid']) from None
        return args

    def key(self, method, args):
        if method in UNKEYED or method in states.READ_ONLY:
            return None
        return validation.instance_uuid_of(method, args)

    def instance_uuid_of(self, method, args):
        return validation.instance_uuid_of(method, args)

    def dispatch(self, method, args, context):
        return getattr(self, 'do_' + method)(context or {}, **args)

    def report_invalid(self, method, uuid, error, context):
        """Report a rejected request; the instance's record is unchanged."""
        with self._lock(uuid):
            record = self.journal.get_instance(uuid) or {}
            seq = self.journal.next_sequence(uuid)
            self._report(uuid, context or {}, method + '.error', states.ERROR,
                         record.get('task_state'),
                         record.get('power_state', states.NOSTATE),
                         _error_of(error), seq)

    # --- records and reports -------------------------------------------------

    def _lock(self, uuid):
        with self._locks_guard:
            return self._locks[uuid]

    def _delete(self, uuid):
        with self._lock(uuid):      # not between report_invalid's get and save
            self.journal.delete_instance(uuid)

    def _get(self, uuid):
        record = self.journal.get_instance(uuid)
        if record is None:
            raise exception.InstanceNotFound(uuid=uuid)
        return record

    def _set(self, record, context, event, **changes):
        """Save ``changes``; report when (vm, task, power) state changed."""
        with self._lock(record['uuid']):
            before = (record.get('vm_state'), record.get('task_state'),
                      record.get('power_state'))
            record.update(changes, updated_at=_now())
            seq = self.journal.save_instance(record['uuid'], record)
            after = (record['vm_state'], record['task_state'],
                     record['power_state'])
            if after != before:
                self._report(record['uuid'], context, event, *after,
                             record.get('error'), seq)

    def _report(self, uuid, context, event, vm_state, task_state, power_state,
                error, sequence):
        LOG.info('%s: %s vm_state=%s task_state=%s power_state=%s',
                 uuid, event, vm_state, task_state, power_state,
                 extra={'instance_uuid': uuid,
                        'request_id': context.get('request_id')})
        self.notifier.instance_state_changed(
            context, host=self.host, instance_uuid=uuid, vm_state=vm_state,
            task_state=task_state, power_state=power_state, event=event,
            error=error, request_id=context.get('request_id'),
            sequence=sequence, timestamp=_now())

    def _power(self, record):
        try:
            return self.driver.get_power_state(record['spec']['instance'])
        except Exception:
            LOG.exception('%s: cannot read power state', record['uuid'])
            return states.NOSTATE

    def _fail(self, record, context, method, exc):
        LOG.error('%s: %s failed: %s', record['uuid'], method, exc,
                  extra={'instance_uuid': record['uuid'],
                         'request_id': context.get('request_id')})
        self._set(record, context, method + '.error', vm_state=states.ERROR,
                  task_state=None, power_state=self._power(record),
                  error=_error_of(exc))

    def _run(self, context, method, uuid, call, task=None, allowed=None):
        """Run a state-changing operation on an existing instance."""
        tr = states.TRANSITIONS[method]
        with self._lock(uuid):      # no power event between check and start
            record = self._get(uuid)
            if record['vm_state'] not in (allowed or tr.allowed):
                raise exception.InstanceInvalidState(
                    action=method, uuid=uuid, vm_state=record['vm_state'],
                    task_state=record['task_state'])
            self._set(record, context, method + '.start',
                      task_state=task or tr.task)
        try:
            call(record['spec'])
        except Exception as exc:
            self._fail(record, context, method, exc)
            raise
        power = tr.end_power_state if method == 'destroy' else self._power(record)
        end_vm_state = tr.end_vm_state
        if (method in ('power_on', 'reboot')    # they boot a rescued guest
                and self.driver.is_rescued(record['spec']['instance'])):
            end_vm_state = states.RESCUED       # as rescued
        self._set(record, context, method + '.end', vm_state=end_vm_state,
                  task_state=None, power_state=power, error=None)
        return record

    # --- operations ----------------------------------------------------------

    def do_spawn(self, context, instance, image_meta, network_info=(),
                 block_device_info=None, admin_password=None,
                 injected_files=()):
        uuid = instance['uuid']
        old = self.journal.get_instance(uuid)
        if old and old['vm_state'] == states.ACTIVE:
            return public(old)          # a repeated spawn is a success
        if old and old['vm_state'] not in states.TRANSITIONS['spawn'].allowed:
            raise exception.InstanceInvalidState(
                action='spawn', uuid=uuid, vm_state=old['vm_state'],
                task_state=old['task_state'])
        try:
            self._check_name_free(uuid, instance['name'])
        except exception.InvalidRequest as exc:     # PROTOCOL 5: report it
            self.report_invalid('spawn', uuid, exc, context)
            raise
        if old:     # a failed attempt: clear what it left before retrying
            self.driver.destroy(old['spec']['instance'],
                                old['spec']['network_info'],
                                old['spec']['block_device_info'], cleanup=True)
        spec = {'instance': instance, 'image_meta': image_meta,
                'network_info': network_info,
                'block_device_info': block_device_info}
        record = {'uuid': uuid, 'name': instance['name'], 'host': self.host,
                  'vm_state': None, 'task_state': None, 'power_state': None,
                  'devices': {}, 'vnc': None, 'created_at': _now(),
                  'error': None, 'spec': spec}
        self._set(record, context, 'spawn.start', vm_state=states.BUILDING,
                  task_state='spawning', power_state=states.NOSTATE)
        try:
            devices = self.driver.spawn(instance, image_meta, network_info,
                                        block_device_info, admin_password,
                                        injected_files)
        except exception.InvalidRequest as exc:
            # Input only found wrong late (an image URL, say): report it, and
            # leave nothing, as for any other invalid spawn.
            self._fail(record, context, 'spawn', exc)
            self._delete(uuid)
            raise
        except Exception as exc:
            self._fail(record, context, 'spawn', exc)
            raise
        self._set(record, context, 'spawn.end', vm_state=states.ACTIVE,
                  task_state=None, power_state=self._power(record),
                  devices=devices, vnc=self._vnc(instance))
        return public(record)

    def _check_name_free(self, uuid, name):
        for other in self.journal.list_instances():
            if other['name'] == name and other['uuid'] != uuid:
                raise exception.InvalidRequest(
                    'instance.name', 'already used by instance %s' % other['uuid'],
                    uuid=uuid)

    def _vnc(self, instance):
        if not self.conf.vnc.enabled:
            return None
        try:
            return self.driver.get_vnc_console(instance)
        except Exception:
            LOG.debug('%s: no VNC console', instance['uuid'])
            return None

    def do_rescue(self, context, instance, rescue_image_meta=None,
                  rescue_password=None):
        def call(spec):
            self.driver.rescue(spec['instance'], spec['image_meta'],
                               spec['network_info'], rescue_image_meta,
                               rescue_password,
                               block_device_info=spec['block_device_info'])
        record = self._run(context, 'rescue', instance['uuid'], call)
        return self._refresh_vnc(record, context)

    def do_unrescue(self, context, instance):
        def call(spec):
            self.driver.unrescue(spec['instance'], spec['network_info'])
        record = self._run(context, 'unrescue', instance['uuid'], call)
        return self._refresh_vnc(record, context)

    def _refresh_vnc(self, record, context):
        """A re-created guest gets a new VNC port."""
        vnc = self._vnc(record['spec']['instance'])
        if vnc != record.get('vnc'):
            self._set(record, context, 'vnc', vnc=vnc)
        return public(record)

    def do_reboot(self, context, instance, reboot_type='SOFT'):
        hard = reboot_type == 'HARD'

        def call(spec):
            self.driver.reboot(spec['instance'], spec['network_info'],
                               spec['block_device_info'], reboot_type)
        record = self._run(context, 'reboot', instance['uuid'], call,
                           task='rebooting_hard' if hard else 'rebooting',
                           allowed=states.HARD_REBOOT_FROM if hard else None)
        return self._refresh_vnc(record, context)

    def do_power_off(self, context, instance, timeout=60):
        return public(self._run(
            context, 'power_off', instance['uuid'],
            lambda spec: self.driver.power_off(spec['instance'], timeout)))

    def do_power_on(self, context, instance):
        return self._start_guest(context, 'power_on', instance)

    def do_resume(self, context, instance):
        return self._start_guest(context, 'resume', instance)

    def _start_guest(self, context, method, instance):
        """power_on/resume: the guest starts again, its VIFs plugged again."""
        record = self._run(
            context, method, instance['uuid'],
            lambda spec: getattr(self.driver, method)(spec['instance'],
                                                      spec['network_info']))
        return self._refresh_vnc(record, context)

    def _simple(method):
        def operation(self, context, instance):
            return public(self._run(
                context, method, instance['uuid'],
                lambda spec: getattr(self.driver, method)(spec['instance'])))
        operation.__name__ = 'do_' + method
        return operation

    do_pause = _simple('pause')
    do_unpause = _simple('unpause')
    do_suspend = _simple('suspend')
    del _simple

    def do_destroy(self, context, instance, network_info=(),
                   block_device_info=None, cleanup=True):
        uuid = instance['uuid']

        def call(spec):
            self.driver.destroy(spec['instance'],
                                network_info or spec['network_info'],
                                block_device_info or spec['block_device_info'],
                                cleanup=cleanup)
        record = self._run(context, 'destroy', uuid, call)
        self._delete(uuid)
        return public(record)

    def do_get_info(self, context, instance_uuid):
        return public(self._get(instance_uuid))

    def do_list_instances(self, context):
        return [public(r) for r in self.journal.list_instances()]

    def do_get_console_output(self, context, instance_uuid, tail_lines=100):
        record = self._get(instance_uuid)
        return self.driver.get_console_output(record['spec']['instance'],
                                              tail_lines)

    def do_get_vnc_console(self, context, instance_uuid):
        record = self._get(instance_uuid)
        if not self.conf.vnc.enabled:
            raise exception.InstanceInvalidState(
                action='get_vnc_console (VNC is disabled)', uuid=instance_uuid,
                vm_state=record['vm_state'], task_state=record['task_state'])
        return self.driver.get_vnc_console(record['spec']['instance'])

    def do_get_host_stats(self, context):
        return dict(self.driver.get_host_stats(), host=self.host,
                    timestamp=_now())

    def do_ping(self, context):
        return {'host': self.host, 'version': version.RPC_API_VERSION,
                'uptime_s': round(time.monotonic() - self._started, 3)}

    # --- changes nobody asked for ---------------------------------------------

    def on_power_event(self, uuid, power_state=None):
        """A libvirt lifecycle event; operations in flight report their own."""
        self._reconcile(uuid, 'power.lifecycle', only_idle=True)

    def sync_power_states(self):
        for record in self.journal.list_instances():
            self._reconcile(record['uuid'], 'power.sync', only_idle=True)

    def _reconcile(self, uuid, event, only_idle):
        with self._lock(uuid):
            record = self.journal.get_instance(uuid)
            if record is None or (only_idle and record['task_state']):
                return
            if record['vm_state'] in (states.BUILDING, states.DELETED):
                return
            power = self._power(record)
            vm_state = states.vm_state_for_power(record['vm_state'], power)
            if (vm_state, power) != (record['vm_state'], record['power_state']):
                self._set(record, {}, event, vm_state=vm_state,
                          power_state=power)

    def recover(self):
        """At start: settle every record left mid-operation by a restart."""
        for record in self.journal.list_instances():
            task = record['task_state']
            if not task:
                self._reconcile(record['uuid'], 'recover', only_idle=True)
                continue
            power = self._power(record)
            if task == 'deleting':
                spec = record['spec']
                self.driver.destroy(spec['instance'], spec['network_info'],
                                    spec['block_device_info'], cleanup=True)
                self._set(record, {}, 'recover', vm_state=states.DELETED,
                          task_state=None, power_state=states.NOSTATE)
                self._delete(record['uuid'])
                continue
            vm_state = {states.RUNNING: states.RESCUED if task == 'rescuing'
                        else states.ACTIVE,
                        states.SHUTDOWN: states.STOPPED,
                        states.PAUSED: states.PAUSED_VM,
                        states.SUSPENDED: states.SUSPENDED_VM}.get(power)
            if task == 'spawning' and power != states.RUNNING:
                vm_state = None
            error = None if vm_state else {
                'class': 'AgentRestarted',
                'message': 'the agent restarted during %s' % task}
            self._set(record, {}, 'recover', vm_state=vm_state or states.ERROR,
                      task_state=None, power_state=power, error=error)

    def host_state(self):
        stats = self.driver.get_host_stats()
        self.notifier.host_state_update(host=self.host, timestamp=_now(), **stats)

    # --- volumes on an existing guest (PROTOCOL 1.1) ---------------------------
    # The record's volumes are its spec's block_device_mapping: hard reboot
    # (the builder re-plans from it) and destroy (disconnects it) follow every
    # attach and detach.

    def do_attach_volume(self, context, instance_uuid, volume_id, connection_info,
                         mountpoint=None):
        def prepare(record):
            self.driver.check_volume_type(connection_info)
            if _find_bdm(record, volume_id) is not None:
                raise exception.InvalidRequest(
                    'volume_id', '%s is already attached' % volume_id, uuid=instance_uuid)
            dev = self.driver.pick_volume_device(
                record['spec']['instance'], mountpoint,
                claimed=[v['device'] for v in volumes_of(record)], volume_id=volume_id)
            return {'mount_device': '/dev/' + dev, 'volume_id': volume_id,
                    'connection_info': connection_info}

        def call(record, bdm):
            self.driver.attach_volume(record['spec']['instance'], bdm)
            spec = record['spec']
            bdi = dict(spec.get('block_device_info') or {})
            bdi['block_device_mapping'] = list(bdi.get('block_device_mapping') or ()) + [bdm]
            spec['block_device_info'] = bdi
        return self._hotplug(context, 'attach_volume', instance_uuid, prepare, call)

    def do_detach_volume(self, context, instance_uuid, volume_id):
        def prepare(record):
            bdm = _find_bdm(record, volume_id)
            if bdm is None:
                raise exception.VolumeNotFound(uuid=instance_uuid, volume_id=volume_id)
            return bdm

        def call(record, bdm):
            self.driver.detach_volume(record['spec']['instance'], bdm)
            bdi = record['spec']['block_device_info']
            bdi['block_device_mapping'] = [b for b in bdi['block_device_mapping']
                                           if b is not bdm]
        return self._hotplug(context, 'detach_volume', instance_uuid, prepare, call)

    def do_attach_interface(self, context, instance_uuid, vif):
        def prepare(record):
            self.driver.check_attach_interface(record['spec']['network_info'] or [], vif)
            return vif

        def call(record, vif):
            self.driver.attach_interface(record['spec']['instance'], vif)
            spec = record['spec']
            spec['network_info'] = list(spec.get('network_info') or ()) + [vif]
        return self._hotplug(context, 'attach_interface', instance_uuid, prepare, call)

    def do_detach_interface(self, context, instance_uuid, vif_id):
        def prepare(record):
            vif = next((v for v in record['spec'].get('network_info') or ()
                        if v['id'] == vif_id), None)
            if vif is None:
                raise exception.InterfaceNotFound(uuid=instance_uuid, vif_id=vif_id)
            return vif

        def call(record, vif):
            self.driver.detach_interface(record['spec']['instance'], vif)
            record['spec']['network_info'] = [v for v in record['spec']['network_info']
                                              if v is not vif]
        return self._hotplug(context, 'detach_interface', instance_uuid, prepare, call)

    def _hotplug(self, context, method, uuid, prepare, call):
        """A device change on an existing guest: task state while it runs,
        then back to the vm_state it started from. A refused request
        (``prepare`` raising) changes nothing and is reported with the
        unchanged states; a failed one keeps the device as it was."""
        tr = states.TRANSITIONS[method]
        with self._lock(uuid):
            record = self._get(uuid)
            if record['vm_state'] not in tr.allowed:
                raise exception.InstanceInvalidState(
                    action=method, uuid=uuid, vm_state=record['vm_state'],
                    task_state=record['task_state'])
            try:
                work = prepare(record)
            except exception.AgentError as exc:
                self._report(uuid, context, method + '.error', record['vm_state'],
                             record['task_state'], record['power_state'],
                             _error_of(exc), self.journal.next_sequence(uuid))
                raise
            self._set(record, context, method + '.start', task_state=tr.task)
        try:
            call(record, work)
        except Exception as exc:
            LOG.error('%s: %s failed: %s', uuid, method, exc,
                      extra={'instance_uuid': uuid, 'request_id': context.get('request_id')})
            self._set(record, context, method + '.error', task_state=None,
                      power_state=self._power(record), error=_error_of(exc))
            raise
        self._set(record, context, method + '.end', task_state=None,
                  power_state=self._power(record), error=None)
        return public(record)


def volumes_of(record):
    """The record's volumes (PROTOCOL 1.1 section 3), from its spec."""
    bdi = (record.get('spec') or {}).get('block_device_info') or {}
    return [{'volume_id': volume_id_of(b),
             'device': b['mount_device'][5:] if b['mount_device'].startswith('/dev/')
             else b['mount_device'],
             'driver_volume_type': b['connection_info']['driver_volume_type']}
            for b in bdi.get('block_device_mapping') or ()]


def vifs_of(record):
    """The record's vifs (PROTOCOL 1.1 section 3), from its spec."""
    return [{'id': v['id'], 'address': v['address'], 'type': v['type'],
             'devname': v.get('devname'),
             'ips': [ip['address'] for s in (v.get('network') or {}).get('subnets') or ()
                     for ip in s.get('ips') or ()]}
            for v in (record.get('spec') or {}).get('network_info') or ()]


def _find_bdm(record, volume_id):
    bdi = (record.get('spec') or {}).get('block_device_info') or {}
    return next((b for b in bdi.get('block_device_mapping') or ()
                 if volume_id_of(b) == volume_id), None)
