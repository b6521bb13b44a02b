"""Benchmark: the seed guest's domain XML, ours vs nova's config classes.

Not a test; needs no service. In one run, rounds alternating so that load
from elsewhere hits every row alike:

  ours       ``builder.build`` + ``to_xml`` of the full seed guest: kvm,
             kernel + ramdisk boot, root + ephemeral + swap + config drive,
             a pty serial logged to a file, USB tablet, VNC, one bridge VIF (the
             builder's policy, the VIF driver and our XML model);
  model      our ``config`` classes alone assembling the same guest (no
             builder), + ``to_xml``;
  nova       nova's own ``nova/virt/libvirt/config.py`` classes assembling
             the same guest, + ``to_xml``;
  floor      the same document from one string template (no model);
  build      ``builder.build`` alone, and
  text       ``to_xml`` alone of one built guest: where ``ours`` goes
             (build - (model - text) is the builder's policy).

It prints the CPU time per guest of each (the median over rounds of the
mean per round) and ``ours / nova`` against the target (<= 0.5).

nova's module comes from the nova wheel on PyPI, never from this
repository: ``$CA_NOVA_WHEEL`` (a wheel file) if set, else the newest
``nova-*.whl`` in ``$CA_BENCH_CACHE`` (default
``~/.cache/compute-agent-bench``), else ``pip download --no-deps nova``
into that directory (once). Only ``nova/virt/libvirt/config.py`` is read
from the wheel and executed, with ``nova.exception``, ``nova.i18n``,
``nova.objects.fields``, ``nova.pci.utils`` and ``nova.virt.hardware``
stubbed; it also imports oslo.log and oslo.utils, which the agent's
dependencies (oslo.messaging) already install.

    .venv/bin/python bench/guest_xml.py [--rounds 15] [--n 300]

Exit status: 0 target met, 1 target missed, 2 the run failed.
"""

import argparse
import glob
import os
import statistics
import subprocess
import sys
import time
import types
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'tests', 'unit'))

import builder_fixtures as bf  # noqa: E402  (tests/unit: request and conf)
from lxml import etree  # noqa: E402

from compute_agent.vif.loader import VifDrivers  # noqa: E402
from compute_agent.virt import builder  # noqa: E402
from compute_agent.virt import config  # noqa: E402

TARGET = 0.5
CACHE = os.environ.get('CA_BENCH_CACHE',
                       os.path.expanduser('~/.cache/compute-agent-bench'))
NOVA_MODULE = 'nova/virt/libvirt/config.py'


# --- the seed guest -------------------------------------------------------------

# (file, device, format) of the seed guest's disks (use_cow_images: the
# ephemeral and swap disks are qcow2 overlays too).
DISKS = (('disk', 'vda', 'qcow2'), ('disk.local', 'vdb', 'qcow2'),
         ('disk.swap', 'vdc', 'qcow2'), ('disk.config', 'vdz', 'raw'))
FILTER_PREFIX = 'ca-'    # the anti-spoofing filter's name: ca-<vif id>

def seed_request():
    return bf.make_request(
        kernel_id='img-kernel', ramdisk_id='img-ramdisk', config_drive=True,
        flavor={'ephemeral_gb': 1, 'swap': 64}, network_info=[bf.bridge_vif(1)])


def seed_conf():
    return bf.make_conf('kvm', {'vnc.enabled': True,
                                'libvirt.use_usb_tablet': True})


def make_ours(conf, request):
    vif_drivers = VifDrivers(conf)

    def ours():
        return builder.build(conf, vif_drivers=vif_drivers,
                             **request).domain.to_xml()
    return ours


def make_build(conf, request):
    vif_drivers = VifDrivers(conf)

    def build():
        return builder.build(conf, vif_drivers=vif_drivers, **request)
    return build


def make_text(conf, request):
    """``to_xml`` alone: it leaves the model as it was, so one guest serves."""
    return make_build(conf, request)().domain.to_xml


def make_model(conf, request):
    """Our XML model assembling the seed guest by hand (no builder)."""
    inst = request['instance']
    d = os.path.join(conf.instances_path, inst['name'])
    vif = request['network_info'][0]

    def model():
        dom = config.Domain(type='kvm', name=inst['name'], uuid=inst['uuid'],
                            memory_unit='KiB', memory_kib=131072, vcpus=1)
        info = config.SysInfo(type='smbios')
        for name, value in (('manufacturer', 'compute-agent'),
                            ('product', 'compute-agent'),
                            ('serial', inst['uuid']), ('uuid', inst['uuid'])):
            info.add('system', config.SysInfoEntry(name=name, value=value))
        dom.sysinfo = info
        dom.os = config.OS(type='hvm', kernel=os.path.join(d, 'kernel'),
                           initrd=os.path.join(d, 'ramdisk'),
                           cmdline='root=/dev/vda console=ttyS0',
                           smbios_mode='sysinfo')
        dom.features = config.Features(acpi=True, apic=True)
        dom.cpu = config.CPU(mode='host-model')
        dom.clock = config.Clock(offset='utc')
        for name, dev, fmt in DISKS:
            dom.add_device(config.Disk(
                type='file', device='disk', driver_name='qemu', driver_type=fmt,
                driver_cache='none', source_file=os.path.join(d, name),
                target_dev=dev, target_bus='virtio'))
        iface = dom.add_device(config.Interface(
            type='bridge', mac=vif['address'], source_bridge=vif['network']['bridge'],
            target_dev=vif['devname'], model='virtio', mtu=vif['network']['mtu']))
        ref = iface.filterref = config.FilterRef(filter=FILTER_PREFIX + vif['id'])
        for name, value in (('MAC', vif['address']), ('IP', '0.0.0.0')):
            ref.add('parameters', config.FilterParameter(name=name, value=value))
        dom.add_device(config.Serial(type='pty', log_file=os.path.join(d, 'console.log'),
                                     log_append=True))
        dom.add_device(config.Input(type='tablet', bus='usb'))
        dom.add_device(config.Graphics(type='vnc', autoport=True, keymap='en-us',
                                       listen='127.0.0.1'))
        dom.add_device(config.Channel(type='unix', target_type='virtio',
                                      target_name=builder.GUEST_AGENT_CHANNEL))
        dom.memballoon = config.MemBalloon(model='virtio', stats_period=10)
        return dom.to_xml()
    return model


def make_nova(nc, conf, request):
    """nova's classes assembling the seed guest, as its driver would."""
    inst = request['instance']
    d = os.path.join(conf.instances_path, inst['name'])
    vif = request['network_info'][0]

    def nova():
        g = nc.LibvirtConfigGuest()
        g.virt_type = 'kvm'
        g.name, g.uuid = inst['name'], inst['uuid']
        g.memory, g.vcpus = 131072, 1
        info = nc.LibvirtConfigGuestSysinfo()
        info.system_manufacturer = info.system_product = 'compute-agent'
        info.system_serial = info.system_uuid = inst['uuid']
        g.sysinfo = info
        g.os_type = 'hvm'
        g.os_kernel = os.path.join(d, 'kernel')
        g.os_initrd = os.path.join(d, 'ramdisk')
        g.os_cmdline = 'root=/dev/vda console=ttyS0'
        g.os_smbios = nc.LibvirtConfigGuestSMBIOS()
        g.features.append(nc.LibvirtConfigGuestFeatureACPI())
        g.features.append(nc.LibvirtConfigGuestFeatureAPIC())
        cpu = nc.LibvirtConfigGuestCPU()
        cpu.mode = 'host-model'
        g.cpu = cpu
        clock = nc.LibvirtConfigGuestClock()
        clock.offset = 'utc'
        g.clock = clock
        for name, dev, fmt in DISKS:
            disk = nc.LibvirtConfigGuestDisk()
            disk.source_type, disk.source_device = 'file', 'disk'
            disk.driver_name, disk.driver_format = 'qemu', fmt
            disk.driver_cache = 'none'
            disk.source_path = os.path.join(d, name)
            disk.target_dev, disk.target_bus = dev, 'virtio'
            g.devices.append(disk)
        iface = nc.LibvirtConfigGuestInterface()
        iface.net_type = 'bridge'
        iface.mac_addr = vif['address']
        iface.source_dev = vif['network']['bridge']
        iface.target_dev = vif['devname']
        iface.model = 'virtio'
        iface.mtu = vif['network']['mtu']
        iface.filtername = FILTER_PREFIX + vif['id']
        iface.add_filter_param('MAC', vif['address'])
        iface.add_filter_param('IP', '0.0.0.0')
        g.devices.append(iface)
        serial = nc.LibvirtConfigGuestSerial()
        serial.type = 'pty'
        serial.log = nc.LibvirtConfigGuestCharDeviceLog()
        serial.log.file, serial.log.append = os.path.join(d, 'console.log'), 'on'
        g.devices.append(serial)
        tablet = nc.LibvirtConfigGuestInput()
        tablet.type, tablet.bus = 'tablet', 'usb'
        g.devices.append(tablet)
        vnc = nc.LibvirtConfigGuestGraphics()
        vnc.type, vnc.autoport = 'vnc', True
        vnc.keymap, vnc.listen = 'en-us', '127.0.0.1'
        g.devices.append(vnc)
        channel = nc.LibvirtConfigGuestChannel()
        channel.type = 'unix'
        channel.target_name = builder.GUEST_AGENT_CHANNEL
        # nova's class cannot leave the socket path to libvirt (ours does);
        # nova's driver names it so (NOVA_ONLY).
        channel.source_path = '/var/lib/libvirt/qemu/%s.%s.sock' % (
            builder.GUEST_AGENT_CHANNEL, inst['name'])
        g.devices.append(channel)
        balloon = nc.LibvirtConfigMemoryBalloon()
        balloon.model, balloon.period = 'virtio', 10
        g.devices.append(balloon)
        return g.to_xml()
    return nova


def _esc(value):
    """Attribute/text escaping, as cheap as it gets."""
    value = str(value)
    if '&' in value or '<' in value or '>' in value or '"' in value:
        value = (value.replace('&', '&amp;').replace('<', '&lt;')
                 .replace('>', '&gt;').replace('"', '&quot;'))
    return value


FLOOR_TEMPLATE = """<domain type="kvm">
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit="KiB">{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  <sysinfo type="smbios">
    <system>
      <entry name="manufacturer">compute-agent</entry>
      <entry name="product">compute-agent</entry>
      <entry name="serial">{uuid}</entry>
      <entry name="uuid">{uuid}</entry>
    </system>
  </sysinfo>
  <os>
    <type>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>root=/dev/vda console=ttyS0</cmdline>
    <smbios mode="sysinfo"/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode="host-model"/>
  <clock offset="utc"/>
  <devices>
{disks}    <interface type="bridge">
      <mac address="{mac}"/>
      <source bridge="{bridge}"/>
      <target dev="{devname}"/>
      <model type="virtio"/>
      <mtu size="{mtu}"/>
      <filterref filter="{filter}">
        <parameter name="MAC" value="{mac}"/>
        <parameter name="IP" value="0.0.0.0"/>
      </filterref>
    </interface>
    <serial type="pty">
      <log file="{log}" append="on"/>
    </serial>
    <input type="tablet" bus="usb"/>
    <graphics type="vnc" autoport="yes" keymap="en-us" listen="127.0.0.1"/>
    <channel type="unix">
      <target type="virtio" name="{channel}"/>
    </channel>
    <memballoon model="virtio">
      <stats period="10"/>
    </memballoon>
  </devices>
</domain>
"""
FLOOR_DISK = """    <disk type="file" device="disk">
      <driver name="qemu" type="{fmt}" cache="none"/>
      <source file="{path}"/>
      <target dev="{dev}" bus="virtio"/>
    </disk>
"""


def make_floor(conf, request):
    """The floor: the same document as one string template, every value
    escaped (no model, no policy); what any XML assembly costs at least."""
    inst = request['instance']
    d = os.path.join(conf.instances_path, inst['name'])
    vif = request['network_info'][0]

    def floor():
        disks = ''.join([FLOOR_DISK.format(fmt=fmt, path=_esc(os.path.join(d, name)),
                                           dev=dev) for name, dev, fmt in DISKS])
        return FLOOR_TEMPLATE.format(
            name=_esc(inst['name']), uuid=_esc(inst['uuid']),
            memory=inst['flavor']['memory_mb'] * 1024,
            vcpus=inst['flavor']['vcpus'], kernel=_esc(os.path.join(d, 'kernel')),
            initrd=_esc(os.path.join(d, 'ramdisk')), disks=disks,
            mac=_esc(vif['address']), bridge=_esc(vif['network']['bridge']),
            devname=_esc(vif['devname']), mtu=vif['network']['mtu'],
            filter=_esc(FILTER_PREFIX + vif['id']),
            log=_esc(os.path.join(d, 'console.log')),
            channel=builder.GUEST_AGENT_CHANNEL)
    return floor


# --- nova's config.py from the wheel --------------------------------------------

def nova_wheel():
    """Path of a nova wheel: $CA_NOVA_WHEEL, the cache, or pip download."""
    wheel = os.environ.get('CA_NOVA_WHEEL')
    if wheel:
        return wheel, 'CA_NOVA_WHEEL'
    found = sorted(glob.glob(os.path.join(CACHE, 'nova-*.whl')))
    if found:
        return found[-1], 'cached in %s' % CACHE
    os.makedirs(CACHE, exist_ok=True)
    print('downloading the nova wheel: pip download --no-deps nova -d %s' % CACHE,
          flush=True)
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps',
                    '--only-binary=:all:', 'nova', '-d', CACHE], check=True)
    found = sorted(glob.glob(os.path.join(CACHE, 'nova-*.whl')))
    if not found:
        raise RuntimeError('pip download left no nova-*.whl in %s' % CACHE)
    return found[-1], 'downloaded into %s' % CACHE


class _Stub(types.ModuleType):
    """A module whose every missing attribute is a harmless placeholder."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return type(name, (Exception,), {})


def load_nova_config(wheel):
    """Execute only nova/virt/libvirt/config.py from ``wheel``."""
    stubs = {}
    for name in ('nova', 'nova.virt', 'nova.virt.libvirt', 'nova.objects',
                 'nova.pci'):
        stubs[name] = types.ModuleType(name)
        stubs[name].__path__ = []
    for name in ('nova.exception', 'nova.objects.fields', 'nova.pci.utils',
                 'nova.virt.hardware'):
        stubs[name] = _Stub(name)
    stubs['nova.i18n'] = types.ModuleType('nova.i18n')
    stubs['nova.i18n']._ = lambda msg: msg
    for name, mod in stubs.items():
        parent, _, child = name.rpartition('.')
        if parent:
            setattr(stubs[parent], child, mod)
    sys.modules.update(stubs)
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(NOVA_MODULE)
    module = types.ModuleType('nova.virt.libvirt.config')
    module.__file__ = '%s!/%s' % (wheel, NOVA_MODULE)
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, 'exec'), module.__dict__)
    return module


# --- measuring ---------------------------------------------------------------------

# What nova's classes write whatever the caller sets (their defaults) or
# cannot leave out, and ours leaves to libvirt: (element path, attribute),
# attribute None for the whole element. shape() ignores them on every row.
NOVA_ONLY = {('domain/memory', 'unit'), ('domain/cpu', 'match'),
             ('domain/devices/memballoon', 'autodeflate'),
             ('domain/devices/memballoon', 'freePageReporting'),
             ('domain/devices/channel/source', None)}


def shape(xml):
    """What a guest holds, order aside: every element's path, attributes
    and text, for checking all rows build the same guest."""
    root = etree.fromstring(xml)
    out = []
    for el in root.iter():
        path = '/'.join([a.tag for a in reversed(list(el.iterancestors()))]
                        + [el.tag])
        if (path, None) not in NOVA_ONLY:
            out.append((path, sorted((k, v) for k, v in el.attrib.items()
                                     if (path, k) not in NOVA_ONLY),
                        (el.text or '').strip()))
    return sorted(out)


def per_call(fn, n):
    # CPU time of this process: on a shared host, time spent descheduled
    # would otherwise land on whichever row was running.
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--n', type=int, default=300, help='guests per round')
    args = parser.parse_args()

    try:
        wheel, how = nova_wheel()
        nc = load_nova_config(wheel)
    except Exception as e:
        print('bench/guest_xml.py: cannot load nova config.py: %s' % e, file=sys.stderr)
        return 2
    print('nova: %s from %s (%s)' % (NOVA_MODULE, os.path.basename(wheel), how))

    conf, request = seed_conf(), seed_request()
    rows = {'ours': make_ours(conf, request), 'model': make_model(conf, request),
            'nova': make_nova(nc, conf, request), 'floor': make_floor(conf, request),
            'build': make_build(conf, request), 'text': make_text(conf, request)}
    shapes = {name: shape(rows[name]()) for name in ('ours', 'model', 'nova')}
    if not rows['floor']() == rows['ours']() == rows['text']():
        print('bench/guest_xml.py: the floor template is not our XML', file=sys.stderr)
        return 2
    for name in ('model', 'nova'):
        if shapes[name] != shapes['ours']:
            print('bench/guest_xml.py: %s builds another guest than ours:\n  %s\n  %s'
                  % (name, shapes[name], shapes['ours']), file=sys.stderr)
            return 2

    times = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, fn in rows.items():
            times[name].append(per_call(fn, args.n))
    us = {name: statistics.median(t) * 1e6 for name, t in times.items()}

    ratio = us['ours'] / us['nova']
    ok = ratio <= TARGET
    print('seed guest XML, median of %d rounds x %d guests:' % (args.rounds, args.n))
    print('  %-46s %8.1f us' % ('nova config.py classes + to_xml', us['nova']))
    print('  %-46s %8.1f us   %.2fx nova' % ('our model alone + to_xml', us['model'],
                                             us['model'] / us['nova']))
    print('  %-46s %8.1f us   %.2fx nova' % ('floor: one string template, no model',
                                             us['floor'], us['floor'] / us['nova']))
    print('  %-46s %8.1f us   %.2fx nova   target <= %.2fx  %s' % (
        'ours: builder.build + to_xml', us['ours'], ratio, TARGET,
        'PASS' if ok else 'MISS'))
    objects = us['model'] - us['text']
    print('  where ours goes: build %.1f us (policy ~%.1f + model objects ~%.1f, '
          'as the model row builds them), to_xml %.1f us'
          % (us['build'], us['build'] - objects, objects, us['text']))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
