"""Requests, configurations and libvirt helpers for the guest builder tests.

``make_request(**overrides)`` gives the keyword arguments of
``builder.build`` for a small valid spawn (docs: protocol-objects) and
``make_conf(...)`` a fresh configuration; ``build(conf, request)`` runs the
builder with the installed VIF drivers.  Nothing here touches the host: the
default instances_path and state_path point at directories that do not exist.
"""

import atexit
import copy
import functools
import os

import pytest
from lxml import etree
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent.vif.loader import VifDrivers
from compute_agent.virt import builder
from compute_agent.virt import schema

VIRT_TYPES = ('kvm', 'qemu', 'xen', 'lxc', 'uml')
HVM_TYPES = ('kvm', 'qemu')
PREFIX = {'kvm': 'vd', 'qemu': 'vd', 'xen': 'xvd', 'uml': 'ubd', 'lxc': 'sd'}
BUS = {'vd': 'virtio', 'xvd': 'xen', 'ubd': 'uml', 'sd': 'scsi', 'hd': 'ide'}

# Never created: the builder must not touch the file system.
STATE_PATH = '/nonexistent/compute-agent-unit/state'
INSTANCES_PATH = '/nonexistent/compute-agent-unit/instances'

INSTANCE_UUID = '6f1b1c1e-1111-4222-8333-444455556666'
INSTANCE_NAME = 'inst-1'
IMAGE_ID = 'img-root'
SECRET_UUID = '0b7e4e0e-1111-4222-8333-aaaaaaaaaaaa'
VIF_IDS = ['11111111-2222-4333-8444-00000000000%d' % i for i in range(1, 10)]


def make_conf(virt_type='kvm', overrides=None):
    """A fresh ConfigOpts: ``overrides`` maps 'group.option' (or 'option'
    for [DEFAULT]) to a value."""
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    conf.set_override('state_path', STATE_PATH)
    conf.set_override('instances_path', INSTANCES_PATH)
    conf.set_override('virt_type', virt_type, 'libvirt')
    for key, value in (overrides or {}).items():
        group, _, name = key.rpartition('.')
        conf.set_override(name, value, group or None)
    return conf


def instance_dir(conf, name=INSTANCE_NAME):
    return os.path.join(conf.instances_path, name)


_INSTANCE_KEYS = ('uuid', 'name', 'image_ref', 'kernel_id', 'ramdisk_id',
                  'config_drive', 'user_data', 'metadata', 'hostname',
                  'key_data')


def make_request(**overrides):
    """Keyword arguments of ``builder.build`` (without conf/vif_drivers).

    Instance keys (``kernel_id``, ``config_drive``, ...) go into the
    instance, ``flavor`` is merged into its flavor, ``disk_format`` goes into
    image_meta; ``image_meta``, ``network_info``, ``block_device_info``,
    ``rescue`` and ``rescue_image_meta`` replace the argument.
    """
    request = {
        'instance': {
            'uuid': INSTANCE_UUID, 'name': INSTANCE_NAME, 'image_ref': IMAGE_ID,
            'kernel_id': None, 'ramdisk_id': None, 'config_drive': False,
            'flavor': {'memory_mb': 128, 'vcpus': 1, 'root_gb': 1,
                       'ephemeral_gb': 0, 'swap': 0},
        },
        'image_meta': {'id': IMAGE_ID, 'disk_format': 'qcow2'},
        'network_info': [],
        'block_device_info': None,
        'rescue': False,
        'rescue_image_meta': None,
    }
    for key, value in overrides.items():
        if key in _INSTANCE_KEYS:
            request['instance'][key] = value
        elif key == 'flavor':
            request['instance']['flavor'].update(value)
        elif key == 'disk_format':
            request['image_meta']['disk_format'] = value
        elif key in request:
            request[key] = value
        else:
            raise TypeError('make_request: unknown override %r' % key)
    return copy.deepcopy(request)


def build(conf, request):
    return builder.build(conf, vif_drivers=VifDrivers(conf), **request)


# --- network_info ------------------------------------------------------------

def bridge_vif(n=1, mtu=1500, bridge='br100'):
    return {'id': VIF_IDS[n - 1], 'address': 'fa:16:3e:00:00:%02x' % n,
            'type': 'bridge', 'devname': 'tapbr%d' % n,
            'network': {'bridge': bridge, 'mtu': mtu}}


def ovs_vif(n=2, mtu=1450):
    return {'id': VIF_IDS[n - 1], 'address': 'fa:16:3e:00:00:%02x' % n,
            'type': 'ovs', 'network': {'bridge': 'br-int', 'mtu': mtu}}


def ethernet_vif(n=3, mtu=None):
    return {'id': VIF_IDS[n - 1], 'address': 'fa:16:3e:00:00:%02x' % n,
            'type': 'ethernet', 'devname': 'tapeth%d' % n,
            'network': {'mtu': mtu} if mtu else {}}


def all_vifs():
    return [bridge_vif(1), ovs_vif(2), ethernet_vif(3)]


# --- block_device_info -------------------------------------------------------

def bdi(root_device_name=None, ephemerals=(), swap=None, volumes=()):
    return {'root_device_name': root_device_name, 'ephemerals': list(ephemerals),
            'swap': swap, 'block_device_mapping': list(volumes)}


def ephemeral(num, dev, size=1):
    return {'num': num, 'device_name': '/dev/' + dev, 'size': size}


def swap(dev, size_mb=64):
    return {'device_name': '/dev/' + dev, 'swap_size': size_mb}


def local_volume(dev, path='/var/lib/volumes/vol-1.img'):
    return {'mount_device': '/dev/' + dev, 'connection_info': {
        'driver_volume_type': 'local', 'data': {'device_path': path}}}


def iscsi_volume(dev, portal='10.0.0.2:3260', lun=1, auth=False):
    data = {'target_portal': portal,
            'target_iqn': 'iqn.2010-10.org.openstack:volume-1',
            'target_lun': lun}
    if auth:
        data.update(auth_username='chapuser', secret_uuid=SECRET_UUID)
    return {'mount_device': '/dev/' + dev, 'connection_info': {
        'driver_volume_type': 'iscsi', 'data': data}}


def rbd_volume(dev, hosts=('10.0.0.1', '10.0.0.5'), ports=(6789, 6790)):
    return {'mount_device': '/dev/' + dev, 'connection_info': {
        'driver_volume_type': 'rbd', 'data': {
            'name': 'volumes/volume-1', 'hosts': list(hosts),
            'ports': list(ports), 'auth_username': 'cinder',
            'secret_uuid': SECRET_UUID}}}


def nfs_volume(dev, export='10.0.0.3:/exports/vol', name='volume-1'):
    return {'mount_device': '/dev/' + dev, 'connection_info': {
        'driver_volume_type': 'nfs', 'data': {'export': export, 'name': name}}}


def all_volumes(prefix):
    """One volume of each kind (and a /dev block one) on <prefix>e..<prefix>i."""
    return [local_volume(prefix + 'e'),
            local_volume(prefix + 'f', path='/dev/mapper/vg-vol'),
            iscsi_volume(prefix + 'g'),
            rbd_volume(prefix + 'h'),
            nfs_volume(prefix + 'i')]


# --- reading the XML ---------------------------------------------------------

def xml_of(plan):
    """The domain as an lxml element parsed from its formatted text."""
    return etree.fromstring(plan.domain.to_xml())


def xp(node, path):
    return node.xpath(path)


def one(node, path):
    found = node.xpath(path)
    assert len(found) == 1, '%s: expected one match, got %r in\n%s' % (
        path, found, etree.tostring(node, pretty_print=True, encoding='unicode'))
    return found[0]


def disk_by_dev(node, dev):
    return one(node, "devices/disk[target/@dev='%s']" % dev)


def target_devs(node):
    return node.xpath('devices/disk/target/@dev')


# --- libvirt's test driver ------------------------------------------------------

def skip_or_fail(reason):
    """Skip, or fail when env CI is set (no silent skips in CI)."""
    if os.environ.get('CI'):
        pytest.fail('%s (CI is set, so this is a failure, not a skip)' % reason)
    pytest.skip(reason)


@functools.lru_cache(maxsize=None)
def libvirt_test_conn():
    """A shared connection to libvirt's test driver (test:///default)."""
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open('test:///default')
    atexit.register(conn.close)
    return conn


def define_and_undefine(xml, conn=None):
    """Define ``xml`` (libvirt raises if it refuses it), return its dumpxml
    (inactive), and undefine it again."""
    import libvirt
    conn = conn or libvirt_test_conn()
    dom = conn.defineXML(xml)
    try:
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        dom.undefine()


def plan_for(virt_type='kvm', conf=None, **request):
    conf = conf or make_conf(virt_type)
    return build(conf, make_request(**request))


def node_for(virt_type='kvm', conf=None, **request):
    plan = plan_for(virt_type, conf, **request)
    return xml_of(plan), plan


def files_by_name(plan):
    return {f.name: f for f in plan.files}


def assert_valid_and_defined(plan):
    node = plan.domain.format()
    schema.validate_domain(node)
    devs = target_devs(node)
    assert len(devs) == len(set(devs)), 'duplicate target devs %s' % devs
    dumped = etree.fromstring(define_and_undefine(plan.domain.to_xml()))
    assert dumped.get('type') == plan.domain.type
    assert sorted(target_devs(dumped)) == sorted(devs)
