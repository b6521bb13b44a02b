"""The instance manager: the state machine between the wire and the driver.

It implements the RPC dispatcher interface (``rpc/dispatcher.py``). A
request is validated and planned once, at the boundary (``validate``: a
spawn's ``virt.plan.GuestPlan`` travels with the job as ``args['plan']``);
operations on an existing instance are planned from its stored request (the
record's ``spec``) before the guest is touched. Requests arrive serialized
per instance; the manager applies the state machine of ``states`` (which
operation may run, its task_state, its end), calls the driver with the plan,
and reports every change of (vm_state, task_state, power_state) with a
per-instance sequence number. Records live in the journal, so they survive
restarts; ``reconcile.py`` keeps them in line with libvirt (power events
and syncs) and settles them at start (``recover``).
"""

import logging
import threading
import time

from compute_agent import exception
from compute_agent import states
from compute_agent import validation
from compute_agent import version
from compute_agent.keyed_locks import KeyedLocks
from compute_agent.later import Later
from compute_agent.device_ops import DeviceOperations
from compute_agent.guest_agent_ops import GuestAgentOperations
from compute_agent.migration_ops import MigrationOperations
# Cold migration (issue 16, migrate): its own mixin.
from compute_agent.cold_migration_ops import ColdMigrationOperations
from compute_agent.cold_migration_settle import ColdMigrationSettlement
from compute_agent.migration_settle import MigrationSettlement
from compute_agent.rebuild_ops import RebuildOperation
from compute_agent import records
from compute_agent.records import public
from compute_agent.reconcile import Reconciliation
from compute_agent.resize_ops import ResizeOperations
from compute_agent.snapshot_ops import SnapshotOperations
from compute_agent.virt import planner as planner_mod

LOG = logging.getLogger(__name__)

# State reports saved by this thread; a request runs on one worker thread,
# so dispatch can tell whether a failed one reported anything.
_saved = threading.local()


def _count_reports(n):
    _saved.reports = getattr(_saved, 'reports', 0) + n


def _error_now(event, changes, record):
    """A report's ``error``: the failure this change records, or the
    record's on an ``.error`` event; never an earlier failure the record
    still keeps (it would make an operation's ``.start`` look failed)."""
    if 'error' in changes:
        return changes['error']
    return record.get('error') if event.endswith('.error') else None

# Private keys of a record: 'spec' (the spawn request, no secrets), 'rescue'
# (the rescue request while rescued, no password), 'resize' (what a revert
# needs while resized, resize_ops.py), 'task_request_id' (the
# request_id of the operation running or last run), 'interrupted' (the
# operation a restart interrupted and its request_id, until its redelivery
# or the next operation) and 'rebuild' (whether the running rebuild starts
# the guest, kept for its redelivery). What a record shows: records.public.


def _error_of(exc):
    if isinstance(exc, exception.AgentError):
        return exc.to_dict()
    return {'class': type(exc).__name__, 'message': str(exc)}


class Manager(ColdMigrationOperations,  # cold migration (issue 16)
              ColdMigrationSettlement,
              DeviceOperations, GuestAgentOperations, MigrationOperations,
              MigrationSettlement, Reconciliation,
              RebuildOperation, ResizeOperations, SnapshotOperations):
    # Run on the RPC consume thread (rpc/server.py): memory only, no I/O.
    inline_methods = frozenset(('ping',))
    # RPC admission (rpc/server.py): never held (they answer at once, or act
    # on the operation running now); checked as they arrive even when held
    # (key() of a destroy cancels its instance's guest-agent waits).
    unheld_methods = states.READ_ONLY | states.ALONGSIDE
    arrival_methods = frozenset(('destroy',))

    def __init__(self, conf, driver, journal, notifier):
        self.conf = conf
        self.driver = driver
        self.journal = journal
        self.notifier = notifier
        self.host = conf.host
        self._started = time.monotonic()
        self._locks = KeyedLocks()     # uuid -> its lock while in use
        # uuid -> when libvirt last confirmed its power state: a sync that
        # changes nothing costs no journal write, so it is kept here and
        # saved with the next change.
        self._checked = {}
        # looks at an instance an event left for later (reconcile._look):
        # a stop once it has held, one an operation holds once it is done
        self._later = Later('power-looks')
        # uuid -> (request_id, outcome) of destroys recovery finished
        self._destroyed = {}
        # uuids this process is migrating away (settle_migrations skips them)
        self._moving = set()
        # uuids whose running live migration was asked to stop
        self._aborting = set()
        self.planner = planner_mod.Planner(conf, driver.vif_drivers,
                                           driver.image_cache)
        self._init_guest_agent()

    # --- the dispatcher interface ------------------------------------------

    def validate(self, method, args, version_):
        """Schema checks, then what can be planned without the record: a
        spawn's whole plan (its VIF drivers' checks, image location, the
        guest and its XML), a rescue's image location. No side effects: an
        invalid request creates and changes nothing."""
        args = validation.validate(method, args)
        if method == 'spawn':
            args['plan'] = self.planner.spawn(
                args['instance'], args['image_meta'], args['network_info'],
                args['block_device_info'], args['admin_password'],
                args['injected_files'])
        elif method == 'rescue':
            self.planner.check_location(args['rescue_image_meta'],
                                        'rescue_image_meta',
                                        args['instance']['uuid'])
        elif method == 'rebuild':
            self.planner.check_location(args['image_meta'], 'image_meta',
                                        args['instance_uuid'])
        return args

    def key(self, method, args):
        if method in states.READ_ONLY:
            return None
        uuid = validation.instance_uuid_of(method, args)
        if method == 'destroy':
            # Runs on the consume thread as the destroy arrives, before it is
            # queued behind the instance's running operation: a guest-agent
            # command that operation waits on is cancelled now
            # (virt/guest_agent.py, "cancellation by destroy").
            self._destroy_queued(uuid)
        if method in states.ALONGSIDE:      # acts on the operation running
            return '%s/%s' % (uuid, method)
        return uuid

    def instance_uuid_of(self, method, args):
        return validation.instance_uuid_of(method, args)

    def dispatch(self, method, args, context):
        context = context or {}
        before = getattr(_saved, 'reports', 0)
        try:
            return getattr(self, 'do_' + method)(context, **args)
        except Exception as exc:
            # Every failed operation is reported (docs:
            # protocol-failure-unchanged), also one refused before it began:
            # no such instance, the wrong state, a pre-check. A cast has no
            # other answer.
            if (getattr(_saved, 'reports', 0) == before
                    and method not in states.READ_ONLY
                    and not method.startswith('_')):
                self._report_refusal(method, args, exc, context)
            raise

    def _report_refusal(self, method, args, exc, context):
        uuid = self.instance_uuid_of(method, args)
        if uuid is None or (isinstance(exc, exception.InstanceNotFound)
                            and self.journal.had_instance(uuid)):
            # Destroyed here, or handed over: its last report stands (deleted,
            # or the new host's); an error from here would overwrite it.
            return
        try:
            self.report_invalid(method, uuid, exc, context)
        except Exception:   # the failure reply must still go out
            LOG.exception('%s: reporting %s.error failed', uuid, method)

    def report_invalid(self, method, uuid, error, context):
        """Report a rejected request; the instance's record is unchanged and
        the report carries its states (``error`` when there is none)."""
        with self._lock(uuid):
            record = self.journal.get_instance(uuid) or {}
            self.journal.next_sequence(uuid, [self._report(
                uuid, context or {}, method + '.error',
                record.get('vm_state') or states.ERROR,
                record.get('task_state'),
                record.get('power_state', states.NOSTATE), _error_of(error))])
            _count_reports(1)

    # --- records and reports -------------------------------------------------

    def _lock(self, uuid, blocking=True):
        return self._locks(uuid, blocking)

    def _delete(self, uuid):
        with self._lock(uuid):      # not between report_invalid's get and save
            self.journal.delete_instance(uuid)
            self._checked.pop(uuid, None)

    def _get(self, uuid):
        record = self.journal.get_instance(uuid)
        # An incoming migration is not this host's until it takes over.
        if record is None or record.get('incoming'):
            raise exception.InstanceNotFound(uuid=uuid)
        return record

    def _set(self, record, context, event, **changes):
        """Save ``changes``, with a report when (vm, task, power) state
        changed: one journal commit. InstanceInvalidState when the record's
        name belongs to another instance (the journal claims it)."""
        with self._lock(record['uuid']):
            before = (record.get('vm_state'), record.get('task_state'),
                      record.get('power_state'))
            record.update(changes, updated_at=records.now())
            record.update(self._ga_fields(record['uuid']))
            if record['uuid'] in self._checked:
                record['power_checked_at'] = self._checked[record['uuid']]
            after = (record['vm_state'], record['task_state'],
                     record['power_state'])
            report = [] if after == before else [self._report(
                record['uuid'], context, event, *after, _error_now(
                    event, changes, record))]
            self.journal.save_instance(record['uuid'], record, report)
            _count_reports(len(report))

    def _report(self, uuid, context, event, vm_state, task_state, power_state,
                error):
        """The state report, for the journal to write with its change (it
        fills in the sequence)."""
        LOG.info('%s: %s vm_state=%s task_state=%s power_state=%s',
                 uuid, event, vm_state, task_state, power_state,
                 extra={'instance_uuid': uuid,
                        'request_id': context.get('request_id')})
        return self.notifier.state_report(
            context, host=self.host, instance_uuid=uuid, vm_state=vm_state,
            task_state=task_state, power_state=power_state, event=event,
            error=error, request_id=context.get('request_id'),
            timestamp=records.now())

    def _power(self, record):
        power = self._probe(record)
        return states.NOSTATE if power is None else power

    def _probe(self, record, retry=True):
        """The power state libvirt confirms now, or None if it cannot be asked."""
        try:
            power = self.driver.get_power_state(record['spec']['instance'],
                                                retry=retry)
        except Exception:
            LOG.exception('%s: cannot read power state', record['uuid'])
            return None
        self._checked[record['uuid']] = records.now()
        return power

    def _fail(self, record, context, method, exc):
        LOG.error('%s: %s failed: %s', record['uuid'], method, exc,
                  extra={'instance_uuid': record['uuid'],
                         'request_id': context.get('request_id')})
        self._set(record, context, method + '.error', vm_state=states.ERROR,
                  task_state=None, power_state=self._power(record),
                  error=_error_of(exc))

    def _refused(self, record, context, method, exc):
        """The operation failed before it touched the guest: its states are
        as they were (docs: protocol-delivery), the error is recorded."""
        LOG.warning('%s: %s refused: %s', record['uuid'], method, exc,
                    extra={'instance_uuid': record['uuid'],
                           'request_id': context.get('request_id')})
        self._set(record, context, method + '.error', task_state=None,
                  error=_error_of(exc))

    def _check(self, op, method, uuid, record, context):
        """states.RUN or states.DONE; InstanceInvalidState otherwise."""
        vm_state = record['vm_state'] if record else None
        mark = (record or {}).get('interrupted') or {}
        # Only the interrupted request's redelivery is let finish it.
        redelivered = (mark.get('op') if mark.get('request_id')
                       == context.get('request_id') else None)
        verdict = states.verdict(op, vm_state, redelivered)
        if verdict is None:
            raise exception.InstanceInvalidState(
                action=method, uuid=uuid, vm_state=vm_state,
                task_state=record['task_state'] if record else None)
        return verdict

    def _run(self, context, method, uuid, call, prepare=None, args=None,
             end_changes=None, keep_on_failure=False, start_changes=None):
        """Run a state-changing operation on an existing instance.

        ``prepare(record)`` plans it from the stored request and makes ready
        whatever the guest is not touched by (a failure there leaves the
        states as they were); ``call(record, plan)`` changes the guest (a
        failure there leaves vm_state ``error``, unless ``keep_on_failure``:
        the call leaves the guest as it was when it fails). An operation of
        several steps (the table's ``then``) passes one call per task_state,
        a list; each later step is reported as it starts. ``end_changes``
        are saved with the end state; ``start_changes(record)`` returns
        what is saved with the start (one commit with the task_state, so a
        restart never sees one without the other).
        """
        op = states.operation(method, args)
        with self._lock(uuid):      # no power event between check and start
            record = self._get(uuid)
            if self._check(op, method, uuid, record, context) == states.DONE:
                if record.get('interrupted'):   # its redelivery: finished
                    self._set(record, context, method + '.end', interrupted=None)
                return record
            start_vm_state = record['vm_state']
            extra = start_changes(record) if start_changes else {}
            self._set(record, context, method + '.start',
                      task_state=states.TRANSITIONS[op].task, interrupted=None,
                      task_request_id=context.get('request_id'), **extra)
        try:
            plan = prepare(record) if prepare else None
        except Exception as exc:
            self._refused(record, context, method, exc)
            raise
        tr = states.TRANSITIONS[op]
        steps = call if isinstance(call, (list, tuple)) else (call,)
        try:
            for task, step in zip((tr.task,) + tr.then, steps, strict=True):
                if task != record['task_state']:
                    self._set(record, context, method + '.start',
                              task_state=task, power_state=self._power(record))
                step(record, plan)
        except Exception as exc:
            (self._refused if keep_on_failure else self._fail)(
                record, context, method, exc)
            raise
        changes = dict(end_changes or {})
        rescued = bool(changes.get('rescue', record.get('rescue')))
        power = self._power(record)
        self._set(record, context, method + '.end',
                  vm_state=states.end_vm_state(op, start_vm_state, rescued, power),
                  task_state=None, power_state=power, error=None, **changes)
        return record

    # --- operations ----------------------------------------------------------

    def do_spawn(self, context, instance, image_meta, network_info=(),
                 block_device_info=None, admin_password=None,
                 injected_files=(), plan=None):
        uuid = instance['uuid']
        old = self.journal.get_instance(uuid)
        if self._check('spawn', 'spawn', uuid, old, context) == states.DONE:
            return public(old)
        if plan is None:        # not validated through validate()
            plan = self.planner.spawn(instance, image_meta, network_info,
                                      block_device_info, admin_password,
                                      injected_files)
        if old:     # a failed attempt: clear what it left before retrying
            self.driver.destroy(old['spec']['instance'],
                                old['spec']['network_info'],
                                old['spec']['block_device_info'], cleanup=True)
        spec = {'instance': instance, 'image_meta': image_meta,
                'network_info': network_info,
                'block_device_info': block_device_info}
        record = {'uuid': uuid, 'name': instance['name'], 'host': self.host,
                  'vm_state': None, 'task_state': None, 'power_state': None,
                  'devices': {}, 'vnc': None, 'created_at': records.now(),
                  'error': None, 'spec': spec, 'rescue': None,
                  'interrupted': None,
                  'task_request_id': context.get('request_id')}
        # Claims the name: of two racing spawns of it, one wins; the other
        # is InstanceInvalidState, reported by dispatch.
        self._set(record, context, 'spawn.start', vm_state=states.BUILDING,
                  task_state=states.TRANSITIONS['spawn'].task,
                  power_state=states.NOSTATE)
        try:
            devices = self.driver.spawn(plan)
        except exception.InvalidRequest as exc:
            # Input only found wrong late (an image URL, say): report it, and
            # leave nothing, as for any other invalid spawn.
            self._fail(record, context, 'spawn', exc)
            self._delete(uuid)
            raise
        except Exception as exc:
            self._fail(record, context, 'spawn', exc)
            raise
        power, vnc = self._power_and_vnc(record)
        self._set(record, context, 'spawn.end',
                  vm_state=states.end_vm_state('spawn', None, False),
                  task_state=None, power_state=power, devices=devices, vnc=vnc)
        return public(record)

    def _power_and_vnc(self, record):
        """``(_power, _vnc)`` of the record's guest, from one lookup."""
        if not self.conf.vnc.enabled:
            return self._power(record), None
        try:
            power, vnc = self.driver.get_power_state_and_vnc(
                record['spec']['instance'])
        except Exception:
            LOG.exception('%s: cannot read power state', record['uuid'])
            return states.NOSTATE, None
        self._checked[record['uuid']] = records.now()
        return power, vnc

    def _vnc(self, instance):
        if not self.conf.vnc.enabled:
            return None
        try:
            return self.driver.get_vnc_console(instance)
        except Exception:
            LOG.debug('%s: no VNC console', instance['uuid'])
            return None

    def _guest_plan(self, record):
        """The plan of the guest as it is defined now: rescued or not."""
        rescue = record.get('rescue')
        if rescue:
            return self.planner.rescue(record['spec'],
                                       rescue.get('rescue_image_meta'))
        return self.planner.guest(record['spec'])

    def _vifs(self, record):
        return self.planner.vifs(record['spec'])

    def do_rescue(self, context, instance, rescue_image_meta=None,
                  rescue_password=None):
        def prepare(record):
            plan = self.planner.rescue(record['spec'], rescue_image_meta,
                                       rescue_password)
            self.driver.prepare_rescue(plan)
            return plan
        record = self._run(
            context, 'rescue', instance['uuid'],
            lambda record, plan: self.driver.rescue(plan), prepare,
            end_changes={'rescue': {'rescue_image_meta': rescue_image_meta}})
        return self._refresh_vnc(record, context)

    def do_unrescue(self, context, instance):
        record = self._run(
            context, 'unrescue', instance['uuid'],
            lambda record, vifs: self.driver.unrescue(
                record['spec']['instance'], vifs), self._vifs,
            end_changes={'rescue': None})
        return self._refresh_vnc(record, context)

    def _refresh_vnc(self, record, context):
        """A re-created guest gets a new VNC port."""
        vnc = self._vnc(record['spec']['instance'])
        if vnc != record.get('vnc'):
            self._set(record, context, 'vnc', vnc=vnc)
        return public(record)

    def do_reboot(self, context, instance, reboot_type='SOFT'):
        record = self._run(
            context, 'reboot', instance['uuid'],
            lambda record, plan: self.driver.reboot(plan, reboot_type),
            self._guest_plan, args={'reboot_type': reboot_type})
        return self._refresh_vnc(record, context)

    def do_power_off(self, context, instance, timeout=60):
        return public(self._run(
            context, 'power_off', instance['uuid'],
            lambda record, _plan: self.driver.power_off(
                record['spec']['instance'], timeout)))

    def do_power_on(self, context, instance):
        return self._start_guest(context, 'power_on', instance)

    def do_resume(self, context, instance):
        return self._start_guest(context, 'resume', instance)

    def _start_guest(self, context, method, instance):
        """power_on/resume: the guest starts again, its VIFs plugged again."""
        record = self._run(
            context, method, instance['uuid'],
            lambda record, vifs: getattr(self.driver, method)(
                record['spec']['instance'], vifs), self._vifs)
        return self._refresh_vnc(record, context)

    def _simple(method):
        def operation(self, context, instance):
            return public(self._run(
                context, method, instance['uuid'],
                lambda record, _plan: getattr(self.driver, method)(
                    record['spec']['instance'])))
        operation.__name__ = 'do_' + method
        return operation

    do_pause = _simple('pause')
    do_unpause = _simple('unpause')
    do_suspend = _simple('suspend')
    del _simple

    def do_destroy(self, context, instance, network_info=(),
                   block_device_info=None, cleanup=True):
        uuid = instance['uuid']

        def call(record, _plan):
            spec = record['spec']
            self.driver.destroy(spec['instance'],
                                network_info or spec['network_info'],
                                block_device_info or spec['block_device_info'],
                                cleanup=cleanup)
            # Cold migration (issue 16): a copy the source kept goes too.
            self.forget_cold_source(record, context)
        request_id, outcome = self._destroyed.get(uuid, (None, None))
        if (outcome is not None and request_id == context.get('request_id')
                and self.journal.get_instance(uuid) is None):
            self._destroy_ran(uuid)
            return outcome      # the redelivery of a destroy recovery finished
        try:
            record = self._run(context, 'destroy', uuid, call)
            self._delete(uuid)
        finally:
            self._destroy_ran(uuid)
        return public(record)

    def do_get_info(self, context, instance_uuid):
        return self._public(self._get(instance_uuid))

    def do_list_instances(self, context):
        return [self._public(r) for r in self.journal.list_instances()
                if not r.get('incoming')]

    def _public(self, record):
        out = public(record)
        out['power_checked_at'] = (self._checked.get(record['uuid'])
                                   or out['power_checked_at'])
        ga = self._ga_fields(record['uuid'])
        out['guest_agent'] = bool(ga.get('guest_agent', out['guest_agent']))
        out['guest_addresses'] = ga.get('guest_addresses', out['guest_addresses'])
        return out

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
                    timestamp=records.now())

    def do_ping(self, context):
        return {'host': self.host, 'version': version.RPC_API_VERSION,
                'uptime_s': round(time.monotonic() - self._started, 3)}

    def host_state(self):
        # No retries: a periodic report is skipped while libvirt is away.
        stats = self.driver.get_host_stats(retry=False)
        self.notifier.host_state_update(host=self.host, timestamp=records.now(), **stats)
