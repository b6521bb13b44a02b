"""The libvirt driver: carries out guest operations (mechanism, not policy).

What a guest looks like is decided before the driver is called: the manager
hands it a ``plan.GuestPlan`` (``planner``/``builder``), and this module
creates the plan's files, connects its volumes, plugs its VIFs and drives
libvirt. It never calls the builder nor edits the domain model; live XML is
read back through the model (``config.Domain.parse``).

Every operation is safe to repeat (a request whose outcome was not
recorded is delivered again), a failed spawn leaves nothing behind, and
every path the driver touches lies in the validated instance directory
under ``instances_path``.

Domains are looked up by instance uuid; their names are the instance names.
Calls go through ``connection.Connection.call`` so a libvirtd restart under
a running agent costs one reconnect, not an error.
"""

import functools
import logging
import shutil

import libvirt

from compute_agent import exception
from compute_agent import states
from compute_agent.images.cache import ImageCache
from compute_agent.netfilter import firewall
from compute_agent.virt import coldmigration   # cold migration (issue 16)
from compute_agent.virt import config
from compute_agent.virt import connection
from compute_agent.virt import console
from compute_agent.virt import disks
from compute_agent.virt import guest
from compute_agent.virt import guest_agent
from compute_agent.virt import host
from compute_agent.virt import ifaceops
from compute_agent.virt import migration
from compute_agent.virt import overlap
from compute_agent.virt import planfiles
from compute_agent.virt import rebuildops
from compute_agent.virt import snapshot
from compute_agent.virt import rescue
from compute_agent.virt import resizeops
from compute_agent.virt import volume
from compute_agent.virt import volumeops
from compute_agent.virt.undo import Undo
from compute_agent.vif.loader import VifDrivers

LOG = logging.getLogger(__name__)

RUNNING_TIMEOUT = 60
ACTIVE_STATES = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED,
                 libvirt.VIR_DOMAIN_PAUSED)
CONFIG_DRIVE_ALIGN = 64 * 1024


def _uuid(instance):
    return instance if isinstance(instance, str) else instance['uuid']


class LibvirtDriver(planfiles.PlanFiles, migration.LiveMigration, snapshot.Snapshots,
                    rescue.Rescue, coldmigration.ColdMigration):
    """Guest operations on one libvirt host.

    ``on_power_event(uuid, power_state)`` is called from a worker thread for
    every lifecycle event libvirt reports (power states, docs:
    protocol-states). Errors: ``InstanceNotFound`` (no domain for the uuid),
    ``HypervisorUnavailable`` (libvirtd unreachable), ``ImageNotFound``,
    ``ImageChecksumMismatch``, ``InvalidRequest``, ``VifPlugFailed``,
    ``InstanceInvalidState``; libvirt's own failures as ``libvirtError``.
    """

    def __init__(self, conf, on_power_event=None, image_cache=None,
                 vif_drivers=None, on_agent_event=None):
        self.conf = conf
        self.connection = connection.Connection(conf, on_power_event,
                                                on_agent_event)
        # Guest-agent commands with deadlines; quiesced() takes this driver.
        self.guest_agent = guest_agent.GuestAgent(conf, self.connection)
        self.image_cache = image_cache or ImageCache(conf)
        self.vif_drivers = vif_drivers or VifDrivers(conf)
        self.firewall = firewall.Firewall(conf, self._call)

    def close(self):
        self.connection.close()

    def healthy(self):
        """libvirtd answers (for the systemd watchdog)."""
        try:
            self._call(lambda c: c.getLibVersion())
            return True
        except Exception:
            return False

    # -- lookups ---------------------------------------------------------------
    def _call(self, fn):
        return self.connection.call(fn)

    @staticmethod
    def _find(conn, uuid):
        try:
            return conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if guest.is_no_domain(e):
                return None
            raise

    def _on_domain(self, instance, fn):
        """``fn(dom)`` on the instance's domain; InstanceNotFound if none."""
        uuid = _uuid(instance)

        def run(conn):
            dom = self._find(conn, uuid)
            if dom is None:
                raise exception.InstanceNotFound(uuid=uuid)
            return fn(dom)
        return self._call(run)

    def exists(self, instance):
        uuid = _uuid(instance)
        return self._call(lambda c: self._find(c, uuid) is not None)

    def _dir(self, instance, create=False):
        """The validated instance dir; by uuid, the domain name gives it."""
        name = (self._on_domain(instance, lambda d: d.name())
                if isinstance(instance, str) else instance['name'])
        return disks.instance_dir(self.conf, name, create=create)

    # -- spawn -----------------------------------------------------------------
    def spawn(self, plan):
        """Create and start the planned guest (a ``plan.GuestPlan``); returns
        the devices chosen.

        The domain is defined while its files are made (overlap.py): libvirt
        reads no file before the start, which waits for both. The caller has
        recorded the spawn durably before (recovery knows every domain it may
        have to remove; an interrupted spawn whose guest does not run ends in
        ``error`` and its redelivery starts over, manager.do_spawn).

        A repeated spawn of an existing domain returns if it is active and
        starts it if it is shut off and every planned file is there under
        its final name (each is made under a temporary name and renamed, so
        it is complete); a stopped domain whose files are not all there is
        removed and the spawn starts over.
        """
        instance = plan.instance
        uuid = instance['uuid']
        state = self._call(lambda c: self._state_of(c, uuid))
        if state is not None:
            if state in ACTIVE_STATES or self._files_complete(plan):
                self._boot(instance, plan.vifs)
                return dict(plan.devices)
            self._remove_domain(uuid)
        xml = plan.xml()
        undo = Undo()
        try:
            inst_dir = self._make_dir(instance, undo)
            overlap.run_all([lambda: self._define(xml, undo),
                             lambda: self._prepare(plan, inst_dir, undo)])
            self._boot(instance, plan.vifs, undo)
        except BaseException:
            self._rollback(instance, undo)
            raise
        return dict(plan.devices)

    def _state_of(self, conn, uuid):
        """The domain's libvirt state; None when there is no domain."""
        dom = self._find(conn, uuid)
        return None if dom is None else guest.libvirt_state(dom)

    def _define(self, xml, undo):
        self._call(lambda c: c.defineXML(xml))
        undo.domain = True

    def _prepare(self, plan, inst_dir, undo):
        """What the guest needs before it starts: files, volumes."""
        self._create_files(plan, inst_dir, undo)
        self._connect_volumes(plan.volumes, undo)

    def _start(self, dom):
        """Start the domain unless it is active; safe to re-run after a reconnect."""
        if guest.libvirt_state(dom) not in ACTIVE_STATES:
            dom.create()
            guest.wait_running(dom, RUNNING_TIMEOUT)

    def _connect_volumes(self, volumes, undo):
        """Connect the plan's (driver, block_device_mapping entry) pairs."""
        for _, bdm in volumes:
            info, vid = bdm['connection_info'], volume.volume_id_of(bdm)
            # The same cached driver, now holding the libvirt connection.
            drv = volume.load(self.conf, info['driver_volume_type'],
                              connection=self.connection)
            drv.connect(info, vid)
            undo.volumes.append((drv, info, vid))

    def _boot(self, instance, vifs, undo=None):
        """Plug VIFs, start the domain, then let the VIF drivers finish.

        libvirt drops an OVS port when its guest stops, so every start
        (spawn, power on, reboot, resume, rescue) plugs again and runs the
        drivers' post_start hooks. ``vifs`` are (driver, vif) pairs.
        """
        network_info = [vif for _, vif in vifs]
        if undo is not None:
            undo.filters = network_info
        self.firewall.prepare(instance, network_info)
        plugged = self.vif_drivers.plug(instance, vifs)
        if undo is not None:
            undo.vifs.extend(plugged)
        self._on_domain(instance, self._start)
        self.vif_drivers.post_start(instance, vifs)
        self.firewall.post_start(instance, network_info)

    def _rollback(self, instance, undo):
        """Remove what the failed call created; log (never raise) trouble."""
        steps = []
        if undo.domain:
            steps.append(lambda: self._remove_domain(instance['uuid']))
        steps += [lambda d=d, v=v: d.unplug(instance, v) for d, v in reversed(undo.vifs)]
        steps.append(lambda: self.firewall.teardown(instance, undo.filters))
        steps += [lambda d=d, i=i, v=v: d.disconnect(i, v)
                  for d, i, v in reversed(undo.volumes)]
        if undo.dir:
            steps.append(lambda: shutil.rmtree(undo.dir, ignore_errors=True))
        else:
            steps += [lambda p=p: disks.unlink(p) for p in undo.files]
        for step in steps:
            try:
                step()
            except Exception:
                LOG.exception('Rollback step failed for instance %s', instance['uuid'])

    # -- destroy -----------------------------------------------------------------
    def _remove_domain(self, uuid):
        def run(conn):
            dom = self._find(conn, uuid)
            if dom is not None:
                guest.destroy_if_active(dom)
                guest.undefine(dom)
        self._call(run)

    def destroy(self, instance, network_info=(), block_device_info=None, cleanup=True):
        """Stop and undefine the guest, unplug VIFs, remove its directory.

        Repeatable: a missing domain, VIF or directory is not an error. VIF
        and volume failures do not stop the cleanup; the first is re-raised.
        """
        self._remove_domain(instance['uuid'])
        errors = []
        _collect(errors, self.firewall.teardown, instance, network_info or [])
        for drv, vif in self.vif_drivers.for_network_info(network_info or []):
            _collect(errors, drv.unplug, instance, vif)
        for bdm in (block_device_info or {}).get('block_device_mapping') or ():
            _collect(errors, self._disconnect_volume, bdm)
        if cleanup:
            disks.remove_instance_dir(self.conf, instance['name'])
        if errors:
            raise errors[0]

    def _disconnect_volume(self, bdm):
        info = bdm['connection_info']
        volume.load(self.conf, info['driver_volume_type'],
                    connection=self.connection).disconnect(info, volume.volume_id_of(bdm))

    # -- rebuild (docs: protocol-method-rebuild) -----------------------------------
    def config_drive_kept(self, instance):
        """``(admin_pass, injected_files)`` of the instance's config drive."""
        return rebuildops.kept_from_config_drive(self, instance)

    def prepare_rebuild(self, plan):
        """Build the rebuild plan's files beside the old ones; the guest is
        not touched (a failure removes what this call made)."""
        rebuildops.prepare(self, plan)

    def rebuild(self, plan, start):
        """Stop the guest, swap the prepared files in, define the planned
        guest and start it when ``start``."""
        rebuildops.swap(self, plan, start)

    # -- power -------------------------------------------------------------------
    def reboot(self, plan, reboot_type='SOFT'):
        """'SOFT' (ACPI shutdown, wait, start) or 'HARD'; returns which happened.

        SOFT falls back to HARD when the guest is not running or does not
        shut down within ``[libvirt] wait_soft_reboot_seconds``. HARD
        defines the planned guest (so a changed policy applies) over the
        existing files and starts it.
        """
        if reboot_type == 'SOFT' and self._soft_reboot(plan.instance, plan.vifs):
            return 'SOFT'
        self._redefine(plan)
        return 'HARD'

    def _soft_reboot(self, instance, vifs):
        def run(dom):
            if guest.libvirt_state(dom) not in (libvirt.VIR_DOMAIN_RUNNING,
                                                libvirt.VIR_DOMAIN_BLOCKED):
                return False
            guest.acpi_shutdown(dom)
            if not guest.wait_for(dom, (libvirt.VIR_DOMAIN_SHUTOFF,),
                                  self.conf.libvirt.wait_soft_reboot_seconds):
                LOG.info('Instance %s ignored the ACPI shutdown; rebooting hard',
                         instance['uuid'])
                return False
            return True
        if not self._on_domain(instance, run):
            return False
        self._boot(instance, vifs)
        return True

    def power_off(self, instance, timeout=60):
        """ACPI shutdown, waiting up to ``timeout`` s, then a hard stop.

        Returns True if the guest shut down cleanly (or was already off).
        """
        def run(dom):
            state = guest.libvirt_state(dom)
            if state not in ACTIVE_STATES:
                return True
            if state != libvirt.VIR_DOMAIN_PAUSED and timeout > 0:
                guest.acpi_shutdown(dom)
                if guest.wait_for(dom, (libvirt.VIR_DOMAIN_SHUTOFF,), timeout):
                    return True
            guest.destroy_if_active(dom)
            return False
        return self._on_domain(instance, run)

    def power_on(self, instance, vifs=()):
        """Start a stopped guest (plugging its VIFs again); no-op if active."""
        self._boot(instance, vifs)

    def pause(self, instance):
        self._on_domain(instance, lambda d: guest.libvirt_state(d) == libvirt.VIR_DOMAIN_PAUSED
                        or d.suspend())

    def unpause(self, instance):
        self._on_domain(instance, lambda d: guest.libvirt_state(d) != libvirt.VIR_DOMAIN_PAUSED
                        or d.resume())

    def suspend(self, instance):
        """Save the guest's memory to libvirt's managed save image and stop it."""
        self._on_domain(instance, lambda d: guest.power_state(d) == states.SUSPENDED
                        or d.managedSave(0))

    def resume(self, instance, vifs=()):
        """Start from the managed save image (create() restores it)."""
        self._boot(instance, vifs)

    # -- resize (docs: protocol-method-resize) ------------------------------------
    # Each takes a plan.ResizePlan; the files are resizeops' business.
    def resize_disks(self, rplan):
        """First step: shut the guest down (cleanly if it will, within
        ``[libvirt] wait_soft_reboot_seconds``), save the disks the resize
        replaces, grow or make the new ones. Repeatable."""
        instance = rplan.new.instance
        self.power_off(instance, self.conf.libvirt.wait_soft_reboot_seconds)
        inst_dir = self._dir(instance)
        for name in rplan.grow + rplan.replace:
            resizeops.save(inst_dir, name)
        for name in rplan.grow:
            resizeops.grow(inst_dir, rplan.new_file(name))
        for name in rplan.replace + rplan.create:
            self._create_file(rplan.new, inst_dir, rplan.new_file(name))

    def finish_resize(self, rplan):
        """Second step: the guest defined and started on the new flavor."""
        self._redefine(rplan.new)

    def revert_resize(self, rplan):
        """The old guest back on its saved disks. The resized guest is
        stopped hard: its disks are thrown away. Repeatable."""
        instance = rplan.old.instance
        self._on_domain(instance, guest.destroy_if_active)
        resizeops.restore(self._dir(instance), rplan)
        self._redefine(rplan.old)

    def confirm_resize(self, rplan):
        """Drop the saved disks and what only the old guest used."""
        resizeops.drop_saved(self._dir(rplan.new.instance), rplan)

    def _redefine(self, plan):
        """Define the planned guest over the existing one, or anew when its
        domain is gone (a hard reboot revives it), and start it."""
        xml = plan.xml()
        uuid = _uuid(plan.instance)

        def stop(conn):
            dom = self._find(conn, uuid)
            if dom is not None:
                guest.destroy_if_active(dom)
        self._call(stop)
        self._call(lambda c: c.defineXML(xml))
        self._boot(plan.instance, plan.vifs)

    # -- network filters ---------------------------------------------------------
    def update_security_rules(self, instance, network_info, vif_id, rules):
        """Replace one VIF's rules, live; returns the new network_info."""
        running = self.get_power_state(instance) == states.RUNNING
        return self.firewall.update_rules(network_info, vif_id, rules, running)

    # -- queries -------------------------------------------------------------------
    def get_power_state(self, instance, retry=True):
        """Power state (docs: protocol-states); 0 NOSTATE for a missing domain.

        ``retry=False``: one connection attempt, for periodic checks that
        must tell quickly that libvirt cannot be asked.
        """
        uuid = _uuid(instance)

        def run(conn):
            dom = self._find(conn, uuid)
            return states.NOSTATE if dom is None else guest.power_state(dom)
        return self.connection.call(run, retry=retry)

    def list_domains(self, retry=True):
        """``{uuid: power_state}`` of every domain on the host."""
        def run(conn):
            out = {}
            for dom in conn.listAllDomains(0):
                try:
                    out[dom.UUIDString()] = guest.power_state(dom)
                except libvirt.libvirtError as e:
                    if not guest.is_no_domain(e):   # undefined meanwhile
                        raise
            return out
        return self.connection.call(run, retry=retry)

    @functools.cached_property
    def _console_keep(self):
        """Rotated console logs to keep; None when virtlogd keeps no more."""
        return console.pruning(self.conf)

    def trim_console_log(self, instance):
        """Drop rotated console logs beyond ``[libvirt] console_log_max_bytes``.

        Only when the operator's bound is below virtlogd's own: otherwise
        every power sync would list each instance directory for nothing.
        """
        if self._console_keep is None:
            return 0
        path = disks.instance_dir(self.conf, instance['name'])
        return console.prune(path, self._console_keep)

    def get_console_output(self, instance, tail_lines=100):
        """Last ``tail_lines`` lines of the serial console log."""
        return console.tail(self._dir(instance), int(tail_lines))

    def get_vnc_console(self, instance):
        """``{'host', 'port'}`` of the running guest's VNC server."""
        vnc = self._vnc_of(self._on_domain(instance, lambda d: d.XMLDesc(0)))
        if vnc is None:
            raise exception.InstanceInvalidState(
                'Instance %s has no VNC console (not running, or VNC disabled)'
                % _uuid(instance))
        return vnc

    def _vnc_of(self, live_xml):
        live = config.Domain.parse(live_xml)
        port = next((g.port for g in live.graphics
                     if g.type == 'vnc' and (g.port or -1) > 0), None)
        if port is None:
            return None
        return {'host': self.conf.vnc.server_proxyclient_address, 'port': port}

    def get_power_state_and_vnc(self, instance):
        """``(power state, VNC console or None)`` from one domain lookup:
        what a spawn records at its end. A missing domain is NOSTATE; a VNC
        console that cannot be read is None."""
        uuid = _uuid(instance)

        def run(conn):
            dom = self._find(conn, uuid)
            if dom is None:
                return states.NOSTATE, None
            power = guest.power_state(dom)
            try:
                vnc = self._vnc_of(dom.XMLDesc(0))
            except libvirt.libvirtError as e:
                if connection.is_connection_error(e):
                    raise       # connection.call asks again
                vnc = None
            return power, vnc
        return self._call(run)

    def get_host_stats(self, retry=True):
        """The host record (docs: protocol-host-report; host_state_update args)."""
        return self.connection.call(
            lambda c: host.host_stats(c, self.conf.instances_path), retry=retry)

    # -- volumes on an existing guest (docs: protocol-method-attach-volume) -------
    def check_volume_type(self, connection_info):
        """InvalidRequest naming the field unless a driver serves the type."""
        volume.load(self.conf, connection_info['driver_volume_type'],
                    field='connection_info.driver_volume_type')

    def pick_volume_device(self, instance, mountpoint, claimed=(), volume_id=None):
        """The device name a new volume gets (InvalidRequest if taken/foreign)."""
        return self._on_domain(instance, lambda d: volumeops.pick_device(
            self.conf, d, mountpoint, claimed, volume_id))

    def attach_volume(self, instance, bdm):
        """Connect the volume and attach it, live if running and persistently."""
        self._on_domain(instance, lambda d: volumeops.attach(
            self.conf, self.connection, d, bdm))

    def detach_volume(self, instance, bdm):
        """Detach once the guest has let it go (VolumeDetachFailed after
        ``[libvirt] device_detach_timeout``), then disconnect it."""
        self._on_domain(instance, lambda d: volumeops.detach(
            self.conf, self.connection, d, bdm))

    # -- NICs on an existing guest (docs: protocol-method-attach-interface) -------
    def check_attach_interface(self, network_info, vif):
        ifaceops.check(self.vif_drivers, network_info, vif)

    def attach_interface(self, instance, vif):
        """Plug the VIF and attach its NIC, live if running and persistently."""
        self._on_domain(instance, lambda d: ifaceops.attach(
            self.conf, self.vif_drivers, self.firewall, d, instance, vif))

    def detach_interface(self, instance, vif):
        """Detach the NIC once the guest let it go, then unplug the VIF."""
        self._on_domain(instance, lambda d: ifaceops.detach(
            self.conf, self.vif_drivers, self.firewall, d, instance, vif))


def _collect(errors, fn, *args):
    try:
        fn(*args)
    except Exception as e:
        LOG.exception('Cleanup step failed')
        errors.append(e)

