"""The libvirt guest XML model: one class per element the agent writes.

Pure mechanism: what a guest should contain is decided by
``compute_agent.virt.builder``; these classes only say where each value lives
in libvirt's XML (see ``xmlbase`` for how a declaration reads and writes).
"""

from compute_agent.virt.xmlbase import Child, Children, Flag, Int, OnOff, Prop
from compute_agent.virt.xmlbase import XMLObject, YesNo


# --- small pieces -----------------------------------------------------------

class Boot(XMLObject):
    TAG = 'boot'
    dev = Prop('@dev')


class CPUFeature(XMLObject):
    TAG = 'feature'
    name = Prop('@name')
    policy = Prop('@policy')


class Timer(XMLObject):
    TAG = 'timer'
    name = Prop('@name')
    tickpolicy = Prop('@tickpolicy')
    present = Prop('@present', YesNo)


class SysInfoEntry(XMLObject):
    TAG = 'entry'
    name = Prop('@name')
    value = Prop('.')


class DiskHost(XMLObject):
    TAG = 'host'
    name = Prop('@name')
    port = Prop('@port')
    transport = Prop('@transport')
    socket = Prop('@socket')


class VirtualPort(XMLObject):
    TAG = 'virtualport'
    type = Prop('@type')
    interface_id = Prop('parameters/@interfaceid')
    profile_id = Prop('parameters/@profileid')


class FilterParameter(XMLObject):
    TAG = 'parameter'
    name = Prop('@name')
    value = Prop('@value')


class FilterRef(XMLObject):
    """An interface's nwfilter; a parameter may repeat (a list, e.g. IP)."""
    TAG = 'filterref'
    filter = Prop('@filter')
    parameters = Children(FilterParameter)


# --- top-level domain parts ---------------------------------------------------

class OS(XMLObject):
    TAG = 'os'
    ORDER = ('type', 'loader', 'kernel', 'initrd', 'cmdline', 'root', 'init',
             'boot', 'bios', 'smbios')
    type = Prop('type')
    arch = Prop('type/@arch')
    machine = Prop('type/@machine')
    loader = Prop('loader')
    kernel = Prop('kernel')
    initrd = Prop('initrd')
    cmdline = Prop('cmdline')
    root = Prop('root')
    init = Prop('init')
    boot = Children(Boot)
    bios_useserial = Prop('bios/@useserial', YesNo)
    smbios_mode = Prop('smbios/@mode')


class Features(XMLObject):
    TAG = 'features'
    acpi = Flag('acpi')
    apic = Flag('apic')
    pae = Flag('pae')


class CPU(XMLObject):
    TAG = 'cpu'
    ORDER = ('model', 'vendor', 'topology', 'feature')
    mode = Prop('@mode')
    match = Prop('@match')
    check = Prop('@check')
    model = Prop('model')
    model_fallback = Prop('model/@fallback')
    vendor = Prop('vendor')
    sockets = Prop('topology/@sockets', Int)
    cores = Prop('topology/@cores', Int)
    threads = Prop('topology/@threads', Int)
    features = Children(CPUFeature)


class Clock(XMLObject):
    TAG = 'clock'
    offset = Prop('@offset')
    timers = Children(Timer)


class SysInfo(XMLObject):
    TAG = 'sysinfo'
    ORDER = ('bios', 'system', 'baseBoard', 'chassis')
    type = Prop('@type')
    system = Children(SysInfoEntry, 'system')


# --- devices ---------------------------------------------------------------

class Disk(XMLObject):
    TAG = 'disk'
    ORDER = ('driver', 'source', 'backingStore', 'target', 'iotune', 'boot',
             'readonly', 'shareable', 'serial', 'alias', 'address')
    type = Prop('@type')                 # file | block | network | dir
    device = Prop('@device')             # disk | cdrom | floppy | lun
    driver_name = Prop('driver/@name')
    driver_type = Prop('driver/@type')   # raw | qcow2
    driver_cache = Prop('driver/@cache')
    driver_io = Prop('driver/@io')
    source_file = Prop('source/@file')
    source_dev = Prop('source/@dev')
    source_protocol = Prop('source/@protocol')
    source_name = Prop('source/@name')
    source_hosts = Children(DiskHost, 'source')
    auth_username = Prop('source/auth/@username')
    auth_secret_type = Prop('source/auth/secret/@type')
    auth_secret_uuid = Prop('source/auth/secret/@uuid')
    auth_secret_usage = Prop('source/auth/secret/@usage')
    target_dev = Prop('target/@dev')
    target_bus = Prop('target/@bus')
    boot_order = Prop('boot/@order', Int)
    readonly = Flag('readonly')
    shareable = Flag('shareable')
    serial = Prop('serial')


class Filesystem(XMLObject):
    TAG = 'filesystem'
    ORDER = ('driver', 'source', 'target', 'readonly')
    type = Prop('@type')                 # mount | file | block | ...
    accessmode = Prop('@accessmode')
    driver_type = Prop('driver/@type')
    source_dir = Prop('source/@dir')
    source_file = Prop('source/@file')
    target_dir = Prop('target/@dir')
    readonly = Flag('readonly')


class Interface(XMLObject):
    TAG = 'interface'
    ORDER = ('mac', 'source', 'virtualport', 'target', 'model', 'driver',
             'mtu', 'filterref', 'alias', 'address')
    type = Prop('@type')                 # bridge | ethernet | network | direct
    mac = Prop('mac/@address')
    source_bridge = Prop('source/@bridge')
    source_network = Prop('source/@network')
    source_dev = Prop('source/@dev')
    source_mode = Prop('source/@mode')
    virtualport = Child(VirtualPort)
    target_dev = Prop('target/@dev')
    target_managed = Prop('target/@managed', YesNo)
    model = Prop('model/@type')
    driver_name = Prop('driver/@name')
    host_csum = Prop('driver/host/@csum', OnOff)
    mtu = Prop('mtu/@size', Int)
    script = Prop('script/@path')
    filterref = Child(FilterRef)


class _CharDevice(XMLObject):
    ORDER = ('source', 'log', 'target', 'alias')
    type = Prop('@type')                 # file | pty | tcp | unix | ...
    source_path = Prop('source/@path')
    source_mode = Prop('source/@mode')
    source_host = Prop('source/@host')
    source_service = Prop('source/@service')
    log_file = Prop('log/@file')
    log_append = Prop('log/@append', OnOff)
    target_type = Prop('target/@type')
    target_port = Prop('target/@port', Int)


class Serial(_CharDevice):
    TAG = 'serial'


class Console(_CharDevice):
    TAG = 'console'


class Channel(_CharDevice):
    """A host-guest channel; the guest agent's is ``type='unix'`` with a
    virtio target named ``org.qemu.guest_agent.0`` (libvirt picks the
    socket path)."""
    TAG = 'channel'
    target_name = Prop('target/@name')


class Input(XMLObject):
    TAG = 'input'
    type = Prop('@type')                 # tablet | mouse | keyboard
    bus = Prop('@bus')


class Graphics(XMLObject):
    TAG = 'graphics'
    type = Prop('@type')                 # vnc | spice | sdl
    port = Prop('@port', Int)
    autoport = Prop('@autoport', YesNo)
    listen = Prop('@listen')
    keymap = Prop('@keymap')
    listen_type = Prop('listen/@type')
    listen_address = Prop('listen/@address')


class Video(XMLObject):
    TAG = 'video'
    model = Prop('model/@type')
    vram = Prop('model/@vram', Int)
    heads = Prop('model/@heads', Int)
    primary = Prop('model/@primary', YesNo)


class Controller(XMLObject):
    TAG = 'controller'
    type = Prop('@type')
    index = Prop('@index', Int)
    model = Prop('@model')


class MemBalloon(XMLObject):
    TAG = 'memballoon'
    model = Prop('@model')
    stats_period = Prop('stats/@period', Int)


class Rng(XMLObject):
    TAG = 'rng'
    ORDER = ('rate', 'backend')
    model = Prop('@model')
    backend_model = Prop('backend/@model')
    backend_path = Prop('backend')
    rate_bytes = Prop('rate/@bytes', Int)
    rate_period = Prop('rate/@period', Int)


class Domain(XMLObject):
    TAG = 'domain'
    ORDER = ('name', 'uuid', 'title', 'description', 'metadata', 'memory',
             'currentMemory', 'vcpu', 'sysinfo', 'bootloader', 'os',
             'features', 'cpu', 'clock', 'on_poweroff', 'on_reboot',
             'on_crash', 'devices')
    type = Prop('@type')                 # kvm | qemu | xen | lxc | uml | test
    name = Prop('name')
    uuid = Prop('uuid')
    memory_kib = Prop('memory', Int)
    memory_unit = Prop('memory/@unit')
    vcpus = Prop('vcpu', Int)
    bootloader = Prop('bootloader')
    sysinfo = Child(SysInfo)
    os = Child(OS)
    features = Child(Features)
    cpu = Child(CPU)
    clock = Child(Clock)
    on_poweroff = Prop('on_poweroff')
    on_reboot = Prop('on_reboot')
    on_crash = Prop('on_crash')
    emulator = Prop('devices/emulator')
    disks = Children(Disk, 'devices')
    filesystems = Children(Filesystem, 'devices')
    controllers = Children(Controller, 'devices')
    interfaces = Children(Interface, 'devices')
    inputs = Children(Input, 'devices')
    graphics = Children(Graphics, 'devices')
    videos = Children(Video, 'devices')
    serials = Children(Serial, 'devices')
    consoles = Children(Console, 'devices')
    channels = Children(Channel, 'devices')
    memballoon = Child(MemBalloon, 'devices')
    rngs = Children(Rng, 'devices')

    _DEVICE_LISTS = {
        Disk: 'disks', Filesystem: 'filesystems', Controller: 'controllers',
        Interface: 'interfaces', Input: 'inputs', Graphics: 'graphics',
        Video: 'videos', Serial: 'serials', Console: 'consoles', Rng: 'rngs',
        Channel: 'channels',
    }

    def add_device(self, device):
        """Append a device to <devices>, in the order devices are added."""
        prop = self._DEVICES.get(device.__class__)
        if prop is None:
            if not isinstance(device, MemBalloon):
                raise KeyError(type(device))    # not a device class
            self.memballoon = device
            return device
        prop.append(self, device)
        return device


# Each device class's list property, looked up once per device added.
Domain._DEVICES = {cls: Domain.__dict__[name]
                   for cls, name in Domain._DEVICE_LISTS.items()}

# Every model class, for tests and tools that walk them all.
ALL_CLASSES = (Boot, CPUFeature, Timer, SysInfoEntry, DiskHost, VirtualPort,
               FilterParameter, FilterRef,
               OS, Features, CPU, Clock, SysInfo, Disk, Filesystem, Interface,
               Serial, Console, Channel, Input, Graphics, Video, Controller,
               MemBalloon, Rng, Domain)
