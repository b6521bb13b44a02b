"""A real Manager on a real LibvirtDriver (``test:///default``) and Journal.

``Harness`` wires the three together with a capturing notifier and a file://
image store holding one small qcow2 image (``IMAGE_ID``). libvirt's
``test:///default`` driver keeps its domains in memory, shared by every
connection of the process: each test uses fresh uuids and names, and the
harness removes every domain a test left behind (``close``).

The driver is created without a lifecycle callback, so no report arrives
behind a test's back; tests call ``manager.on_power_event`` themselves, and
``Harness(events=True)`` wires libvirt's real events for the one test that
wants them.
"""

import datetime
import os
import shutil
import subprocess
import threading
import time
import uuid as uuid_mod

import libvirt
import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import states
from compute_agent.journal import Journal
from compute_agent.manager import Manager
from compute_agent.rpc import outbox
from compute_agent.virt.driver import LibvirtDriver

HOST = 'unit-host'
IMAGE_ID = 'img-cirros'
RESCUE_IMAGE_ID = 'img-rescue'

# docs: protocol-reports: the args of instance_state_changed, and the values.
REPORT_KEYS = frozenset(('host', 'instance_uuid', 'vm_state', 'task_state',
                         'power_state', 'event', 'error', 'request_id',
                         'sequence', 'timestamp'))
HOST_STATE_KEYS = frozenset(('host', 'hypervisor_type', 'hypervisor_version',
                             'vcpus', 'vcpus_used', 'memory_mb',
                             'memory_mb_used', 'local_gb', 'local_gb_used',
                             'running_vms', 'timestamp'))
RECORD_KEYS = frozenset(('uuid', 'name', 'host', 'vm_state', 'task_state',
                         'power_state', 'devices', 'vnc', 'created_at',
                         'updated_at', 'error', 'power_checked_at', 'filters',
                         'volumes', 'vifs', 'image_ref', 'flavor',
                         # guest agent (issue 15)
                         'guest_agent', 'guest_addresses'))
VM_STATES = frozenset(('building', 'active', 'stopped', 'paused', 'suspended',
                       'rescued', 'resized', 'error', 'deleted'))
TASK_STATES = frozenset((None, 'spawning', 'rebooting', 'rebooting_hard',
                         'powering-off', 'powering-on', 'pausing',
                         'unpausing', 'suspending', 'resuming', 'rescuing',
                         'unrescuing', 'deleting',
                         # resize (1.1)
                         'resize_migrating', 'resize_finish',
                         'resize_confirming', 'resize_reverting'))
POWER_STATES = frozenset((0, 1, 3, 4, 6, 7))

# Power state (docs: protocol-states) -> what libvirt shows for it: (domain state, managed
# save image present).
LIBVIRT_STATE = {
    states.RUNNING: (libvirt.VIR_DOMAIN_RUNNING, False),
    states.PAUSED: (libvirt.VIR_DOMAIN_PAUSED, False),
    states.SHUTDOWN: (libvirt.VIR_DOMAIN_SHUTOFF, False),
    states.SUSPENDED: (libvirt.VIR_DOMAIN_SHUTOFF, True),
}


def make_image(path, size='16M'):
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', path, size],
                   check=True)


class Notifier:
    """Captures what the manager publishes: ``(context, fields)`` pairs.

    A state report is captured when the journal commits it (it calls the
    message's body with the sequence it assigned), so ``reports`` holds
    exactly the reports written with their records.
    """

    def __init__(self):
        self.calls = []
        self.host_updates = []
        self.changed = threading.Condition()

    def state_report(self, context, **fields):
        def body(sequence):
            self.instance_state_changed(context, sequence=sequence, **fields)
            return b'{}'
        return outbox.Message(outbox.REPORT, '', 'reports', body,
                              durable=False)

    def instance_state_changed(self, context, **fields):
        with self.changed:
            self.calls.append((context, fields))
            self.changed.notify_all()

    def host_state_update(self, **fields):
        self.host_updates.append(fields)

    @property
    def reports(self):
        return [fields for _ctx, fields in self.calls]

    def for_uuid(self, uuid):
        return [f for f in self.reports if f['instance_uuid'] == uuid]

    def wait_for(self, predicate, timeout=5.0):
        """Wait until some report satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for report in self.reports:
                    if predicate(report):
                        return report
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)


def new_uuid():
    return str(uuid_mod.uuid4())


def make_instance(uuid=None, name=None, image_ref=IMAGE_ID, **extra):
    uuid = uuid or new_uuid()
    instance = {'uuid': uuid, 'name': name or 'mgr-' + uuid[:13],
                'image_ref': image_ref,
                'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 1}}
    instance.update(extra)
    return instance


def context(request_id=None):
    return {'request_id': request_id or 'req-' + new_uuid(),
            'user_id': 'user-1', 'project_id': 'project-1'}


@pytest.fixture
def h(tmp_path):
    """A Harness under the test's tmp_path, closed after the test."""
    harness = Harness(tmp_path)
    yield harness
    harness.close()


class Harness:

    def __init__(self, root, events=False):
        self.root = str(root)
        self.store = os.path.join(self.root, 'images')
        os.makedirs(self.store)
        make_image(os.path.join(self.store, IMAGE_ID))
        make_image(os.path.join(self.store, RESCUE_IMAGE_ID))
        conf = agent_conf.register_all(cfg.ConfigOpts())
        conf([], project='compute-agent', default_config_files=[])
        for name, value, group in (
                ('connection_uri', 'test:///default', 'libvirt'),
                ('virt_type', 'qemu', 'libvirt'),
                ('disk_cachemode', 'writethrough', 'libvirt'),
                # A stop is reported at once: the debounce has its own tests.
                ('stopped_event_delay', 0, 'libvirt'),
                ('image_store_url', 'file://' + self.store, 'images'),
                ('host', HOST, None),
                ('state_path', os.path.join(self.root, 'state'), None),
                ('instances_path', os.path.join(self.root, 'instances'), None)):
            conf.set_override(name, value, group)
        self.conf = conf
        self.notifier = Notifier()
        self.journal = Journal(conf.state_path)
        callback = None
        if events:
            def callback(uuid, power_state):
                self.manager.on_power_event(uuid, power_state)
        self.driver = LibvirtDriver(conf, on_power_event=callback)
        self.manager = Manager(conf, self.driver, self.journal, self.notifier)
        self._before = set(self._all_domains())

    # -- libvirt -------------------------------------------------------------
    @property
    def conn(self):
        return self.driver.connection.get()

    def _all_domains(self):
        return [d.UUIDString() for d in self.conn.listAllDomains(0)]

    def domain(self, uuid):
        """The libvirt domain of ``uuid``, or None."""
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def libvirt_state(self, uuid):
        """(libvirt domain state, has a managed save image)."""
        dom = self.domain(uuid)
        assert dom is not None, 'no domain for %s' % uuid
        return dom.state()[0], bool(dom.hasManagedSaveImage(0))

    def close(self):
        """Remove every domain this test created; close everything."""
        for uuid in set(self._all_domains()) - self._before:
            dom = self.domain(uuid)
            if dom is None:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
                if dom.hasManagedSaveImage(0):
                    dom.managedSaveRemove(0)
                dom.undefine()
            except libvirt.libvirtError:
                pass
        self.driver.close()
        self.journal.close()

    # -- requests ------------------------------------------------------------
    def call(self, method, ctx=None, **args):
        """validate + dispatch, as the RPC server does."""
        valid = self.manager.validate(method, args, '1.0')
        return self.manager.dispatch(method, valid, ctx if ctx is not None
                                     else context())

    def spawn(self, instance=None, ctx=None, **args):
        instance = instance or make_instance()
        args.setdefault('image_meta', {'id': instance.get('image_ref') or IMAGE_ID,
                                       'disk_format': 'qcow2'})
        return instance, self.call('spawn', ctx, instance=instance, **args)

    def info(self, uuid):
        return self.call('get_info', instance_uuid=uuid)

    def instance_dir(self, instance):
        return os.path.join(self.conf.instances_path, instance['name'])

    def journal_bytes(self):
        """Every byte of the journal's files (the database, WAL, shm)."""
        data = b''
        state = self.conf.state_path
        for name in sorted(os.listdir(state)):
            if name.startswith('journal.sqlite'):
                with open(os.path.join(state, name), 'rb') as f:
                    data += f.read()
        return data

    def force_record(self, uuid, **changes):
        """Rewrite a journal record, as a killed agent could have left it."""
        record = self.journal.get_instance(uuid)
        record.update(changes)
        self.journal.save_instance(uuid, record)
        return record

    def remove_image(self, image_id):
        os.unlink(os.path.join(self.store, image_id))
        shutil.rmtree(os.path.join(self.conf.instances_path, '_base'),
                      ignore_errors=True)


def parse_timestamp(value):
    """An ISO 8601 timestamp in UTC, or AssertionError."""
    ts = datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))
    assert ts.utcoffset() == datetime.timedelta(0), value
    return ts
