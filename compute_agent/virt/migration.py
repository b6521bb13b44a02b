"""Live migration, the libvirt side (mechanism; docs: protocol-method-live-migrate).

Mixed into ``driver.LibvirtDriver``. The source reads what the destination
must check (``migration_facts``) and moves the guest (``live_migrate``:
``migrateToURI3``, peer to peer, the destination persisting the domain;
with ``block`` the instance's writable local disks are copied,
``VIR_MIGRATE_NON_SHARED_INC``, onto the overlays the destination made over
its own image cache). The agents check shared storage themselves, so libvirt
is told the move is safe (``VIR_MIGRATE_UNSAFE``: it cannot tell a shared
local file system from a private one). The destination checks
(``check_incoming``), makes ready (``prepare_incoming``: directory, disks,
volumes, filters, VIFs), finishes (``finish_incoming``) or undoes
(``rollback_incoming``); the source removes what is left
(``cleanup_migrated``). Which files, VIFs and volumes a guest has is the
plan's (policy); this module only carries it out.
"""

import logging
import os
import re
import secrets
import xml.etree.ElementTree as ET

import libvirt

from compute_agent import exception
from compute_agent.virt import disks
from compute_agent.virt.undo import Undo
from compute_agent.virt import guest
from compute_agent.virt import volume

LOG = logging.getLogger(__name__)

MIGRATABLE_XML = (libvirt.VIR_DOMAIN_XML_MIGRATABLE
                  | libvirt.VIR_DOMAIN_XML_SECURE)
BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
              | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNSAFE)
MiB = 1024 * 1024
PROBE_RE = re.compile(r'\.migration-probe-[0-9a-f]{16}\Z')


def _refuse(uuid, reason):
    return exception.MigrationPreCheckError(uuid=uuid, reason=reason)


def writable_local_disks(xml, inst_dir):
    """Target names of the guest's writable file disks inside ``inst_dir``
    (what a block migration copies; volumes and read-only disks are not)."""
    prefix = inst_dir.rstrip('/') + '/'
    out = []
    for disk in ET.fromstring(xml).iter('disk'):
        source, target = disk.find('source'), disk.find('target')
        if (disk.get('device') != 'disk' or disk.find('readonly') is not None
                or source is None or target is None):
            continue
        if (source.get('file') or '').startswith(prefix):
            out.append(target.get('dev'))
    return out


def retarget_xml(xml, src_dir, dest_dir):
    """The guest XML with ``src_dir`` paths moved to ``dest_dir`` and the
    backing chains left for the destination's libvirt to read."""
    root = ET.fromstring(xml)
    for disk in root.iter('disk'):
        for backing in disk.findall('backingStore'):
            disk.remove(backing)
    if src_dir != dest_dir:
        src, dest = src_dir.rstrip('/') + '/', dest_dir.rstrip('/') + '/'
        for el in root.iter():
            for key, value in el.attrib.items():
                if value.startswith(src):
                    el.set(key, dest + value[len(src):])
            if el.text and el.text.startswith(src):
                el.text = dest + el.text[len(src):]
    return ET.tostring(root, encoding='unicode')


def _dir_bytes(path):
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


class LiveMigration:
    """The migration steps of one host's driver."""

    # -- source ----------------------------------------------------------------
    def migration_facts(self, instance):
        """What the destination checks: the guest's machine, memory and
        the bytes a block migration copies."""
        xml = self._on_domain(instance, lambda d: d.XMLDesc(MIGRATABLE_XML))
        root = ET.fromstring(xml)
        os_type = root.find('os/type')
        memory = root.find('memory')
        unit = {'KiB': 1024, 'MiB': MiB, 'GiB': 1024 * MiB}.get(
            memory.get('unit', 'KiB'), 1024)
        inst_dir = disks.instance_dir(self.conf, instance['name'])
        return {'domain_type': root.get('type'),
                'arch': os_type.get('arch'), 'machine': os_type.get('machine'),
                'memory_mb': int(memory.text) * unit // MiB,
                'disk_bytes': _dir_bytes(inst_dir),
                'instance_dir': inst_dir}

    def live_migrate(self, instance, dest_uri, migrate_uri, dest_dir, block):
        """Move the running guest; returns when it runs at the destination.

        Run on the primary connection directly: a connection lost under a
        migration must not start a second one.
        """
        src_dir = disks.instance_dir(self.conf, instance['name'])
        dom = self._on_domain(instance, lambda d: d)
        live = dom.XMLDesc(MIGRATABLE_XML)
        persistent = dom.XMLDesc(MIGRATABLE_XML | libvirt.VIR_DOMAIN_XML_INACTIVE)
        params = {
            libvirt.VIR_MIGRATE_PARAM_URI: migrate_uri,
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: retarget_xml(live, src_dir, dest_dir),
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: retarget_xml(
                persistent, src_dir, dest_dir),
        }
        flags = BASE_FLAGS
        if block:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = (
                writable_local_disks(live, src_dir))
        LOG.info('Migrating %s to %s (stream %s, block=%s)', instance['uuid'],
                 dest_uri, migrate_uri, block)
        dom.migrateToURI3(dest_uri, params, flags)

    def abort_migration(self, instance):
        """Cancel the running migration job; False if there is none."""
        def run(dom):
            try:
                dom.abortJob()
                return True
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return False        # no job
                raise
        return self._on_domain(instance, run)

    def is_running_here(self, instance):
        uuid = instance['uuid']

        def run(conn):
            dom = self._find(conn, uuid)
            return dom is not None and dom.isActive() == 1
        return self._call(run)

    def migration_view(self, instance):
        """What libvirt here says of the guest, for settling an
        interrupted migration: ``active`` (a qemu process), ``running`` (not
        paused for a migration: the copy that runs), ``job`` (libvirt still
        moves it), ``defined`` (libvirt has the domain, running or not)."""
        uuid = instance['uuid']

        def run(conn):
            dom = self._find(conn, uuid)
            if dom is None or dom.isActive() != 1:
                return {'active': False, 'running': False, 'job': False,
                        'defined': dom is not None}
            state, reason = dom.state()
            moving = (state == libvirt.VIR_DOMAIN_PAUSED and reason in (
                libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                getattr(libvirt, 'VIR_DOMAIN_PAUSED_POSTCOPY', -1),
                getattr(libvirt, 'VIR_DOMAIN_PAUSED_POSTCOPY_FAILED', -1)))
            try:
                job = dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
            except libvirt.libvirtError:
                job = False
            return {'active': True, 'running': not moving, 'job': job,
                    'defined': True}
        return self._call(run)

    def cleanup_migrated(self, instance, network_info, block_device_info,
                         remove_files):
        """After the guest left: undefine it here, remove its filters, VIFs
        and volume connections, and its files unless they are shared."""
        uuid = instance['uuid']

        def undefine(conn):
            dom = self._find(conn, uuid)
            if dom is None:
                return
            if dom.isActive():   # never remove a guest that runs here
                raise exception.MigrationError(
                    uuid=uuid, reason='the guest still runs on the source')
            guest.undefine(dom)
        self._call(undefine)
        self._release(instance, network_info, block_device_info, remove_files)

    def _release(self, instance, network_info, block_device_info, remove_files):
        errors = []
        for step, args in (
                [(self.firewall.teardown, (instance, network_info or []))]
                + [(drv.unplug, (instance, vif)) for drv, vif
                   in self.vif_drivers.for_network_info(network_info or [])]
                + [(self._disconnect_volume, (bdm,)) for bdm
                   in (block_device_info or {}).get('block_device_mapping') or ()]):
            try:
                step(*args)
            except Exception as e:
                LOG.exception('%s: migration cleanup step failed', instance['uuid'])
                errors.append(e)
        if remove_files:
            disks.remove_instance_dir(self.conf, instance['name'])
        if errors:
            raise errors[0]

    # -- destination -------------------------------------------------------------
    def check_incoming(self, uuid, facts, network_info, block_device_info,
                       reserved_mb):
        """MigrationPreCheckError unless this host can run the guest."""
        if self._call(lambda c: self._find(c, uuid)) is not None:
            raise _refuse(uuid, 'the destination already has a domain of it')
        caps = ET.fromstring(self._call(lambda c: c.getCapabilities()))
        machines = set()
        for g in caps.iter('guest'):
            arch = g.find('arch')
            if arch is None or arch.get('name') != facts['arch']:
                continue
            for m in arch.iter('machine'):
                machines.add(m.text)
                if m.get('canonical'):
                    machines.add(m.get('canonical'))
        if not machines:
            raise _refuse(uuid, 'the destination cannot run %s guests'
                          % facts['arch'])
        if facts.get('machine') and facts['machine'] not in machines:
            raise _refuse(uuid, 'the destination has no machine type %s'
                          % facts['machine'])
        free_mb = self._call(lambda c: c.getFreeMemory()) // MiB
        if facts['memory_mb'] > free_mb - reserved_mb:
            raise _refuse(uuid, 'not enough free memory at the destination '
                          '(%d MiB needed, %d MiB free beyond %d MiB reserved)'
                          % (facts['memory_mb'], max(0, free_mb - reserved_mb),
                             reserved_mb))
        for i, vif in enumerate(network_info or ()):
            try:
                self.vif_drivers.get(vif.get('type'), 'network_info[%d].type' % i)
            except exception.InvalidRequest:
                raise _refuse(uuid, 'the destination has no VIF driver for '
                              'type %r' % vif.get('type')) from None
        for bdm in (block_device_info or {}).get('block_device_mapping') or ():
            info = bdm['connection_info']
            try:
                volume.load(self.conf, info['driver_volume_type'])
            except exception.InvalidRequest:
                raise _refuse(uuid, 'the destination has no volume driver '
                              'for %r' % info['driver_volume_type']) from None
            path = (info.get('data') or {}).get('device_path')
            if info['driver_volume_type'] == 'local' and not os.path.exists(path):
                raise _refuse(uuid, 'volume %s is not reachable at the '
                              'destination' % volume.volume_id_of(bdm))

    # -- the shared-storage check (a file one writes, the other must see) --------
    def write_probe(self):
        """Create a probe file in instances_path; returns its name."""
        os.makedirs(self.conf.instances_path, mode=disks.DIR_MODE, exist_ok=True)
        name = '.migration-probe-%s' % secrets.token_hex(8)
        with open(os.path.join(self.conf.instances_path, name), 'x'):
            pass
        return name

    def sees_probe(self, name):
        if not PROBE_RE.match(name or ''):
            raise exception.InvalidRequest('migration.probe', 'not a probe name')
        return os.path.exists(os.path.join(self.conf.instances_path, name))

    def remove_probe(self, name):
        try:
            os.unlink(os.path.join(self.conf.instances_path, name))
        except FileNotFoundError:
            pass

    def free_disk_bytes(self):
        st = os.statvfs(_existing(self.conf.instances_path))
        return st.f_frsize * st.f_bavail

    def prepare_incoming(self, plan, block):
        """Directory, disks (block migration), volumes, filters and VIFs
        for the incoming guest; everything undone on failure. Returns the
        instance dir."""
        instance = plan.instance
        undo = Undo()
        try:
            inst_dir = self._make_dir(instance, undo)
            if block:
                self._create_files(plan, inst_dir, undo)
            self._connect_volumes(plan.volumes, undo)
            network_info = [vif for _, vif in plan.vifs]
            undo.filters = network_info
            self.firewall.prepare(instance, network_info)
            undo.vifs.extend(self.vif_drivers.plug(instance, plan.vifs))
        except BaseException:
            if not block:
                undo.dir = None     # shared: the source's files
                undo.files = []
            self._rollback(instance, undo)
            raise
        return inst_dir

    def finish_incoming(self, plan):
        """The guest runs here now: the VIF drivers' and filters' after-start work."""
        self.vif_drivers.post_start(plan.instance, plan.vifs)
        self.firewall.post_start(plan.instance, [vif for _, vif in plan.vifs])

    def rollback_incoming(self, instance, network_info, block_device_info,
                          remove_files):
        """Undo prepare_incoming (and a domain a failed migration left)."""
        self._remove_domain(instance['uuid'])
        self._release(instance, network_info, block_device_info, remove_files)


def _existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path
