"""The guest builder: which disks, devices and boot a guest gets (policy).

``build()`` turns a validated spawn/rescue request into a ``GuestPlan``: the
domain model, the device names it chose, the files the driver must create
(under their final names: a rescue's own files end in ``.rescue``), the VIFs
and volumes with their drivers. It is pure: no libvirt, no files, no
journal. It covers every branch
of 2012 nova's ``get_guest_config`` plus what a modern KVM operator expects,
each behind an option.
"""

import os
import re

from compute_agent import exception
from compute_agent.conf import snapshot
from compute_agent.netfilter import firewall
from compute_agent.virt import blockinfo
from compute_agent.virt import config
from compute_agent.virt import console
from compute_agent.virt import volume
from compute_agent.virt.plan import DiskFile, GuestPlan

GiB = 1024 ** 3
MiB = 1024 ** 2
HVM_TYPES = ('kvm', 'qemu')
GUEST_AGENT_CHANNEL = 'org.qemu.guest_agent.0'


class _Host:
    """What every guest of one configuration shares, decided once per
    configuration (``snapshot.derived``): model objects every guest writes
    alike, held by all of them (``XMLObject.shared``), and prototypes each
    guest gets a copy of with its own values (``XMLObject.copy``)."""

    def __init__(self, opts):
        self.opts = opts
        self.lv = lv = opts.libvirt
        self.virt_type = vt = lv.virt_type
        self.hvm = vt in HVM_TYPES
        self.prefix, self.bus = blockinfo.disk_prefix_and_bus(opts)
        self.root_fmt = 'qcow2' if opts.use_cow_images else 'raw'
        # A file disk of each format: _file_disk sets the rest (the UML
        # driver takes no <driver>).
        self.disks = {
            fmt: config.Disk(type='file', device='disk', **(
                {} if vt == 'uml' else {'driver_name': 'qemu', 'driver_type': fmt,
                                        'driver_cache': lv.disk_cachemode}),
                source_file='', target_dev='', target_bus=self.bus)
            for fmt in ('raw', 'qcow2')}
        # The instance directory is this + its (checked, slash-free) name.
        self.instances_dir = os.path.join(opts.instances_path, '')
        self.sysinfo = None     # the entries every guest's sysinfo starts with
        if self.hvm and lv.sysinfo_serial:
            self.sysinfo = tuple(
                config.SysInfoEntry(name=name, value='compute-agent').shared()
                for name in ('manufacturer', 'product'))
        self.features = self.cpu = self.clock = None
        if self.hvm:
            self.features = config.Features(acpi=True, apic=True).shared()
            cpu = _cpu(lv, vt)
            self.cpu = cpu and cpu.shared()
        if self.hvm or vt == 'xen':
            self.clock = config.Clock(offset=lv.clock_offset).shared()
        # virtlogd writes the pty's output to the log and rotates it, so a
        # guest cannot fill the disk (virt/console.py); QEMU's pty alone
        # drops output while no client is attached.
        self.console = (config.Serial(type='pty', log_file='', log_append=True)
                        if self.hvm else config.Console(type='pty').shared())
        self.devices = tuple(
            device.shared() for device in
            _graphics(opts, vt) + (_hvm_extras(lv) if self.hvm else ()))
        self.balloon = (config.MemBalloon(model='virtio', stats_period=10)
                        if lv.mem_balloon else config.MemBalloon(model='none')).shared()


class _Context:
    """What every step of one build needs, computed once."""

    def __init__(self, conf, instance, image_meta, bdi, rescue,
                 rescue_image_meta):
        self.conf = conf
        self.host = host = snapshot.derived(conf, _Host)
        # Every option a build reads, read once (conf/snapshot.py).
        self.opts = host.opts
        self.lv = host.lv
        self.instance = instance
        self.image_meta = image_meta or {}
        self.bdi = bdi = bdi or {}
        self.rescue = rescue
        self.rescue_image_meta = rescue_image_meta
        self.virt_type = host.virt_type
        self.dir = host.instances_dir + instance['name']
        # path() joins the builder's own file names (no slash in them):
        # os.path.join's general case costs ~0.5 us a call, 8+ calls a
        # guest. The name is validated (no slash), so dir never ends in one.
        self._dir_slash = self.dir + '/'
        self.prefix, self.bus = host.prefix, host.bus
        self.namer = blockinfo.DeviceNamer(
            self.prefix, blockinfo.claimed_by_block_device_info(bdi) if bdi else ())
        self.volume_devs = set(blockinfo.volume_devices(bdi)) if bdi else set()
        self.root_dev = (not rescue and blockinfo.strip_dev(self.bdi.get('root_device_name'))
                         or self.namer.nth(0))
        self.devices = {}
        self.files = []
        self.volumes = []       # (volume driver, connection_info)

    def path(self, name):
        return self._dir_slash + name

    @property
    def root_is_iso(self):
        return self.image_meta.get('disk_format') == 'iso'

    @property
    def rescue_image_id(self):
        meta = self.rescue_image_meta or {}
        return (meta.get('id') or self.lv.rescue_image_id
                or self.instance.get('image_ref'))

    @property
    def rescue_is_iso(self):
        return (self.rescue_image_meta or {}).get('disk_format') == 'iso'


def build(conf, instance, image_meta, network_info=(), block_device_info=None,
          rescue=False, rescue_image_meta=None, vif_drivers=None, vifs=None):
    """Plan the guest for a (validated) spawn, or for its rescue.

    ``vifs`` are the request's (VIF driver, vif) pairs, already checked;
    without them ``vif_drivers`` (a ``compute_agent.vif.loader.VifDrivers``)
    finds the drivers of ``network_info``.
    """
    ctx = _Context(conf, instance, image_meta, block_device_info, rescue,
                   rescue_image_meta)
    _check_block_devices(ctx)
    flavor = instance['flavor']
    host = ctx.host
    dom = config.Domain(type=ctx.virt_type, name=instance['name'],
                        uuid=instance['uuid'], memory_unit='KiB')
    dom.memory_kib = flavor['memory_mb'] * 1024
    dom.vcpus = flavor['vcpus']
    if host.sysinfo is not None:
        dom.sysinfo = _sysinfo(host, instance)
    dom.os = _os(ctx)
    if host.hvm and ctx.lv.hw_machine_type:
        dom.os.machine = ctx.lv.hw_machine_type
    if host.features is not None:
        dom.features = host.features
    if host.cpu is not None:
        dom.cpu = host.cpu
    if host.clock is not None:
        dom.clock = host.clock

    if ctx.virt_type == 'lxc':
        _lxc_root(ctx, dom)
    elif rescue:
        _rescue_disks(ctx, dom)
        _rescue_volumes(ctx, dom)
    else:
        _disks(ctx, dom)
    if instance.get('config_drive') or ctx.opts.force_config_drive:
        _config_drive(ctx, dom)

    if vifs is None:
        vifs = (vif_drivers.for_network_info(network_info)
                if network_info else [])
    for driver, vif in vifs:
        iface = dom.add_device(driver.get_config(instance, vif, ctx.virt_type))
        firewall.decorate(ctx.opts, iface, vif)   # anti-spoofing, security rules

    _consoles(ctx, dom)
    for device in host.devices:
        dom.add_device(device)
    if host.hvm:
        # Without an explicit element libvirt adds a balloon anyway.
        dom.memballoon = host.balloon
    _pcie_ports(ctx, dom)
    images = {}
    for meta in (image_meta, rescue_image_meta if rescue else None):
        if meta and meta.get('id'):
            images.setdefault(meta['id'], meta)
    return GuestPlan(domain=dom, devices=ctx.devices, files=ctx.files,
                     instance_dir=ctx.dir, instance=instance, vifs=list(vifs),
                     volumes=ctx.volumes, images=images, rescue=rescue)


# --- boot -------------------------------------------------------------------

def _os(ctx):
    vt = ctx.virt_type
    if vt == 'lxc':
        # The seed also wrote <cmdline>console=ttyS0</cmdline>; libvirt's
        # schema has no cmdline for os type exe and the lxc driver ignores
        # it, so it is left out.
        return config.OS(type='exe', init='/sbin/init')
    if vt == 'uml':
        return config.OS(type='uml', kernel='/usr/bin/linux',
                         root='/dev/' + ctx.root_dev)
    values = {'type': 'linux' if vt == 'xen' else 'hvm'}    # one OS() call
    if vt == 'xen':
        values['root'] = '/dev/' + ctx.root_dev
    if ctx.virt_type in HVM_TYPES and ctx.lv.sysinfo_serial:
        values['smbios_mode'] = 'sysinfo'

    inst = ctx.instance
    if ctx.rescue:
        kernel_id = ctx.lv.rescue_kernel_id or inst.get('kernel_id')
        ramdisk_id = ctx.lv.rescue_ramdisk_id or inst.get('ramdisk_id')
        suffix = '.rescue'
    else:
        kernel_id, ramdisk_id, suffix = (inst.get('kernel_id'),
                                         inst.get('ramdisk_id'), '')
    if kernel_id:
        values['kernel'] = ctx.path('kernel' + suffix)
        ctx.files.append(DiskFile('kernel' + suffix, 'kernel' + suffix,
                                  image_id=kernel_id))
        if ramdisk_id:
            values['initrd'] = ctx.path('ramdisk' + suffix)
            ctx.files.append(DiskFile('ramdisk' + suffix, 'ramdisk' + suffix,
                                      image_id=ramdisk_id))
        # The seed gave the rescue kernel no command line; without
        # console=ttyS0 a rescued guest's console log stays empty.
        cmdline = ('ro' if vt == 'xen' else
                   'root=/dev/%s console=ttyS0' % ctx.root_dev)
        extra = _extra_cmdline(ctx)
        values['cmdline'] = cmdline + ' ' + extra if extra else cmdline
        return config.OS(**values)
    os_ = config.OS(**values)
    if vt in HVM_TYPES:
        # A xen PV guest boots through its kernel or bootloader, never a
        # <boot dev> (the seed wrote one; libvirt ignores it).
        iso = ctx.rescue_is_iso if ctx.rescue else ctx.root_is_iso
        for dev in (('cdrom', 'hd') if iso else ('hd',)):
            os_.add('boot', config.Boot(dev=dev))
    return os_


# Kernel parameters an image may add: words of printable ASCII, no quotes.
_CMDLINE_RE = re.compile(r'^[A-Za-z0-9_.,:=/+-]+( [A-Za-z0-9_.,:=/+-]+)*$')


def _extra_cmdline(ctx):
    """Image property ``os_command_line`` (nova's name): appended to the
    kernel command line of a kernel-booted, not rescued guest (e.g.
    ``acpi=off``)."""
    if ctx.rescue:
        return None
    extra = (ctx.image_meta.get('properties') or {}).get('os_command_line')
    if extra is None:
        return None
    if not isinstance(extra, str) or len(extra) > 1024 or not _CMDLINE_RE.match(extra):
        raise exception.InvalidRequest(
            'image_meta.properties.os_command_line',
            'must be space-separated words of letters, digits and _.,:=/+- '
            '(at most 1024 characters)', uuid=ctx.instance['uuid'])
    return extra


def _cpu(lv, virt_type):
    mode = lv.cpu_mode or ('host-model' if virt_type == 'kvm' else 'none')
    if mode == 'none':
        return None
    cpu = config.CPU(mode=mode)
    if mode == 'custom':
        cpu.match = 'exact'
        cpu.model = lv.cpu_model
        cpu.model_fallback = 'allow'
    return cpu


def _sysinfo(host, instance):
    """The shared manufacturer and product, then this guest's ids."""
    info = config.SysInfo(type='smbios')
    for entry in host.sysinfo:
        info.add('system', entry)
    uuid = instance['uuid']
    info.add('system', config.SysInfoEntry(name='serial', value=uuid))
    info.add('system', config.SysInfoEntry(name='uuid', value=uuid))
    return info


# --- disks ------------------------------------------------------------------

def _check_block_devices(ctx):
    """Refuse block_device_info that would give libvirt clashing disks.

    Each device name may be used once, never for the root disk unless a
    volume is the root, and only with this guest's disk prefix (its bus).
    """
    bdi = ctx.bdi
    if not bdi or ctx.virt_type == 'lxc':
        return      # lxc guests get no disks from block_device_info
    root = blockinfo.strip_dev(bdi.get('root_device_name')) or ctx.namer.nth(0)
    named = [('block_device_info.ephemerals[%d].device_name' % i,
              e['device_name'], False)
             for i, e in enumerate(bdi.get('ephemerals') or ())]
    if bdi.get('swap'):
        named.append(('block_device_info.swap.device_name',
                      bdi['swap']['device_name'], False))
    named += [('block_device_info.block_device_mapping[%d].mount_device' % i,
               v['mount_device'], True)
              for i, v in enumerate(bdi.get('block_device_mapping') or ())]
    seen = {}
    for field, name, is_volume in named:
        dev = blockinfo.strip_dev(name)
        if not (dev.startswith(ctx.prefix) and len(dev) == len(ctx.prefix) + 1):
            raise exception.InvalidRequest(
                field, 'must be /dev/%s<letter> on this host (%s guests)'
                % (ctx.prefix, ctx.virt_type), uuid=ctx.instance['uuid'])
        if dev in seen:
            raise exception.InvalidRequest(
                field, '%s is also used by %s' % (name, seen[dev]),
                uuid=ctx.instance['uuid'])
        if dev == root and not is_volume:
            raise exception.InvalidRequest(
                field, '%s is the root device' % name, uuid=ctx.instance['uuid'])
        seen[dev] = field

def _file_disk(ctx, name, dev, bus=None, device='disk', fmt='raw'):
    disk = ctx.host.disks[fmt].copy(source_file=ctx.path(name), target_dev=dev)
    if bus:
        disk.target_bus = bus
    if device != 'disk':
        disk.device = device
    if device == 'cdrom':
        disk.readonly = True
    return disk


def _root_format(ctx):
    return ctx.host.root_fmt


def _local_format(ctx):
    """Ephemeral and swap disks: qcow2 overlays on a cached blank base with
    use_cow_images (2012 get_guest_config, nova's Qcow2 backend), else raw."""
    return _root_format(ctx)


def _root_disk(ctx, name, kind, image_id, iso, dev):
    if iso:
        ctx.files.append(DiskFile(name, 'iso', image_id=image_id))
        cdrom = next(d for d in ('hda', 'hdb', 'hdc', 'hdd') if ctx.rescue or ctx.namer.is_free(d))
        return _file_disk(ctx, name, cdrom, bus='ide', device='cdrom')
    fmt = _root_format(ctx)
    ctx.files.append(DiskFile(name, kind, fmt=fmt, image_id=image_id,
                              size_bytes=ctx.instance['flavor']['root_gb'] * GiB))
    return _file_disk(ctx, name, dev, fmt=fmt)


def _disks(ctx, dom):
    inst, flavor, namer = ctx.instance, ctx.instance['flavor'], ctx.namer
    if ctx.root_dev not in ctx.volume_devs:
        disk = dom.add_device(_root_disk(ctx, 'disk', 'root', inst.get('image_ref'),
                                         ctx.root_is_iso, ctx.root_dev))
        ctx.devices['root'] = namer.claim(disk.target_dev)
    else:
        ctx.devices['root'] = ctx.root_dev

    ephemerals = ctx.bdi.get('ephemerals') or ()
    second = namer.nth(1)
    ephemeral_dev = None
    fmt = _local_format(ctx)
    if (flavor.get('ephemeral_gb', 0) > 0 and namer.is_free(second)
            and not any(e['num'] == 0 for e in ephemerals)):
        ephemeral_dev = namer.claim(second)
        ctx.files.append(DiskFile('disk.local', 'ephemeral', fmt=fmt,
                                  size_bytes=flavor['ephemeral_gb'] * GiB))
        dom.add_device(_file_disk(ctx, 'disk.local', ephemeral_dev, fmt=fmt))
        ctx.devices['ephemeral'] = ephemeral_dev

    for eph in ephemerals:
        name, dev = 'disk.eph%d' % eph['num'], blockinfo.strip_dev(eph['device_name'])
        ctx.files.append(DiskFile(name, 'ephemeral', fmt=fmt,
                                  size_bytes=eph['size'] * GiB))
        dom.add_device(_file_disk(ctx, name, dev, fmt=fmt))
        ctx.devices['ephemeral%d' % eph['num']] = dev

    swap = ctx.bdi.get('swap')
    if swap and swap.get('swap_size', 0) > 0:
        _swap(ctx, dom, blockinfo.strip_dev(swap['device_name']),
              swap['swap_size'])
    elif flavor.get('swap', 0) > 0:
        dev = namer.nth(2 if ephemeral_dev else 1)
        if dev not in ctx.volume_devs:     # a volume mapped there replaces it
            if not namer.is_free(dev):
                dev = namer.next_free()
            _swap(ctx, dom, namer.claim(dev), flavor['swap'])

    for i, bdm in enumerate(ctx.bdi.get('block_device_mapping') or ()):
        info = bdm['connection_info']
        dev = blockinfo.strip_dev(bdm['mount_device'])
        driver = volume.load(ctx.conf, info['driver_volume_type'])
        ctx.volumes.append((driver, bdm))
        dom.add_device(volume_disk(ctx.conf, bdm, dev, ctx.bus, driver))
        ctx.devices['volume%d' % i] = dev


def volume_disk(conf, bdm, dev, bus, driver=None):
    """The guest disk of a block_device_mapping entry, ``<serial>`` = its
    volume id (docs: protocol-objects); for spawn and hot-plug alike."""
    info = bdm['connection_info']
    driver = driver or volume.load(conf, info['driver_volume_type'])
    disk = driver.get_config(info, dev, bus)
    if conf.libvirt.virt_type == 'uml':     # the UML driver takes no <driver>
        disk.driver_name = disk.driver_type = disk.driver_cache = None
    elif conf.libvirt.virt_type in HVM_TYPES:
        disk.serial = volume.serial_for(volume.volume_id_of(bdm))
    return disk


def _swap(ctx, dom, dev, size_mb):
    fmt = _local_format(ctx)
    ctx.files.append(DiskFile('disk.swap', 'swap', fmt=fmt, size_bytes=size_mb * MiB))
    dom.add_device(_file_disk(ctx, 'disk.swap', dev, fmt=fmt))
    ctx.devices['swap'] = dev


def _rescue_disks(ctx, dom):
    """Rescue image first, the instance's own root disk second."""
    first, second = ctx.namer.nth(0), ctx.namer.nth(1)
    disk = dom.add_device(_root_disk(ctx, 'disk.rescue', 'rescue',
                                     ctx.rescue_image_id, ctx.rescue_is_iso,
                                     first))
    ctx.devices['rescue'] = disk.target_dev
    if ctx.root_is_iso:
        dom.add_device(_file_disk(ctx, 'disk', 'hdb', bus='ide', device='cdrom'))
        ctx.devices['root'] = 'hdb'
    else:
        dom.add_device(_file_disk(ctx, 'disk', second, fmt=_root_format(ctx)))
        ctx.devices['root'] = second
    ctx.namer.claim(disk.target_dev)
    ctx.namer.claim(ctx.devices['root'])


def _rescue_volumes(ctx, dom):
    """Volumes stay attached in rescue, after the rescue disk and the root:
    the next free names (the guest finds them by serial, not by name)."""
    namer = blockinfo.DeviceNamer(ctx.prefix, (ctx.devices['rescue'], ctx.devices['root']))
    for i, bdm in enumerate(ctx.bdi.get('block_device_mapping') or ()):
        dev = namer.claim(namer.next_free())
        ctx.namer.claim(dev)
        info = bdm['connection_info']
        driver = volume.load(ctx.conf, info['driver_volume_type'])
        ctx.volumes.append((driver, bdm))
        dom.add_device(volume_disk(ctx.conf, bdm, dev, ctx.bus, driver))
        ctx.devices['volume%d' % i] = dev


def _lxc_root(ctx, dom):
    # The image is unpacked/mounted at rootfs by the driver; a rescue
    # reuses the instance's own.
    if not ctx.rescue:
        ctx.files.append(DiskFile('disk', 'root', fmt=_root_format(ctx),
                                  image_id=ctx.instance.get('image_ref'),
                                  size_bytes=ctx.instance['flavor']['root_gb'] * GiB))
    dom.add_device(config.Filesystem(type='mount', source_dir=ctx.path('rootfs'),
                                     target_dir='/'))


def _config_drive(ctx, dom):
    # A rescue gets its own drive (it carries the rescue password), so the
    # instance's disk.config stays as it was for unrescue.
    name = 'disk.config.rescue' if ctx.rescue else 'disk.config'
    dev = ctx.namer.claim(ctx.namer.last_free())
    ctx.files.append(DiskFile(name, 'config'))
    if ctx.virt_type == 'lxc':
        return      # lxc guests have no disks; the drive is not attachable
    dom.add_device(_file_disk(ctx, name, dev))
    ctx.devices['config_drive'] = dev


# --- consoles, graphics and the rest -----------------------------------------

def _consoles(ctx, dom):
    if ctx.host.hvm:    # the pty logged to a file (_Host)
        dom.add_device(ctx.host.console.copy(log_file=ctx.path(console.CONSOLE_LOG)))
    else:
        dom.add_device(ctx.host.console)


def _graphics(opts, virt_type):
    """The USB tablet and VNC devices (shared by a configuration's guests)."""
    vnc = opts.vnc
    if not vnc.enabled or virt_type in ('lxc', 'uml'):
        return ()
    devices = ()
    # libvirt refuses a USB tablet on a Xen PV guest (os type linux, not
    # hvm; nova 2012.2 too).
    if opts.libvirt.use_usb_tablet and virt_type != 'xen':
        devices = (config.Input(type='tablet', bus='usb'),)
    return devices + (config.Graphics(type='vnc', autoport=True, keymap=vnc.keymap,
                                      listen=vnc.server_listen),)


def _hvm_extras(lv):
    """The guest agent channel and RNG of an HVM guest (shared)."""
    devices = ()
    if lv.guest_agent:
        devices += (config.Channel(type='unix', target_type='virtio',
                                   target_name=GUEST_AGENT_CHANNEL),)
    if lv.rng_dev_path:
        devices += (config.Rng(model='virtio', backend_model='random',
                               backend_path=lv.rng_dev_path),)
    return devices


def _pcie_ports(ctx, dom):
    """q35: spare PCIe root ports, one per disk or NIC hot-plugged later.

    libvirt gives a q35 guest's own PCI devices root ports of their own
    (and only one spare); the builder adds ``num_pcie_ports`` more with
    explicit indexes after one per device that needs a port, so they stay
    free for hot-plug.
    """
    machine = ctx.lv.hw_machine_type or ''
    if ctx.virt_type not in HVM_TYPES or 'q35' not in machine:
        return
    used = sum(1 for d in dom.disks if d.target_bus == 'virtio')
    used += len(dom.interfaces) + len(dom.rngs)
    used += 1 if dom.memballoon is not None and dom.memballoon.model != 'none' else 0
    used += 1 if dom.channels else 0    # their virtio-serial controller
    used += 2       # USB controller and video
    for i in range(ctx.lv.num_pcie_ports):
        dom.add_device(config.Controller(type='pci', index=used + 1 + i,
                                         model='pcie-root-port'))
