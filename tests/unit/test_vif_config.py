"""VIF drivers without touching the host: <interface> XML, checks, loader.

Each driver's get_config is checked with XPath and against libvirt's RelaxNG
schema inside a minimal domain; invalid VIFs are refused with VifPlugFailed
naming the VIF; VifDrivers.plug_all rolls back what it plugged.
"""

import uuid

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.vif import base
from compute_agent.vif import loader
from compute_agent.vif import ovsdb
from compute_agent.virt import config
from compute_agent.virt import schema

VIF_ID = '3f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b'
INSTANCE = {'uuid': '6f1b1c1e-1111-4222-8333-444455556666', 'name': 'inst-1'}


def make_conf(**overrides):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    for key, value in overrides.items():
        group, _, name = key.rpartition('.')
        conf.set_override(name, value, group or None)
    return conf


@pytest.fixture
def drivers():
    return loader.VifDrivers(make_conf(**{'ovs.integration_bridge': 'br-int'}))


def vif(vif_type='bridge', **kw):
    v = {'id': VIF_ID, 'address': 'fa:16:3e:12:34:56', 'type': vif_type,
         'devname': 'tap3f1a2b3c-4d',
         'network': {'id': 'net-1', 'bridge': 'br100', 'label': 'private',
                     'mtu': 1450, 'subnets': []},
         'details': {}}
    for key, value in kw.items():
        if value is DELETE:
            v.pop(key, None)
        else:
            v[key] = value
    return v


DELETE = object()


def domain_with(iface, virt_type='kvm'):
    dom = config.Domain(type=virt_type, name='inst-1', uuid=INSTANCE['uuid'],
                        memory_unit='KiB', memory_kib=65536, vcpus=1)
    dom.os = config.OS(type='hvm', arch='x86_64', machine='pc')
    dom.os.add('boot', config.Boot(dev='network'))
    dom.add_device(iface)
    return dom


def render(drivers, v, virt_type='kvm'):
    iface = drivers.get(v['type']).get_config(INSTANCE, v, virt_type)
    dom = domain_with(iface, virt_type)
    schema.validate_domain(dom.format())     # libvirt's own grammar
    node = dom.format().find('devices/interface')
    assert node is not None
    return node


def one(node, path):
    found = node.xpath(path)
    assert len(found) == 1, (path, found)
    return found[0]


# -- get_config ------------------------------------------------------------------

@pytest.mark.parametrize('virt_type', ['kvm', 'qemu'])
def test_bridge_config(drivers, virt_type):
    node = render(drivers, vif('bridge'), virt_type)
    assert one(node, '@type') == 'bridge'
    assert one(node, 'mac/@address') == 'fa:16:3e:12:34:56'
    assert one(node, 'source/@bridge') == 'br100'
    assert one(node, 'target/@dev') == 'tap3f1a2b3c-4d'
    assert node.xpath('target/@managed') == []      # libvirt makes the tap
    assert one(node, 'model/@type') == 'virtio'
    assert one(node, 'mtu/@size') == '1450'
    assert node.xpath('virtualport') == []


def test_bridge_config_without_mtu_or_devname(drivers):
    v = vif('bridge', devname=DELETE)
    v['network']['mtu'] = None
    node = render(drivers, v)
    assert node.xpath('mtu') == []
    assert one(node, 'target/@dev') == ('tap' + VIF_ID)[:14] == 'tap3f1a2b3c-4d'


def test_bridge_config_xen_has_no_virtio_model(drivers):
    v = vif('bridge')
    iface = drivers.get('bridge').get_config(INSTANCE, v, 'xen')
    node = iface.format()
    assert node.xpath('model') == []


def test_ovs_config(drivers):
    node = render(drivers, vif('ovs'))
    assert one(node, '@type') == 'bridge'
    assert one(node, 'source/@bridge') == 'br-int'      # [ovs] integration_bridge
    assert one(node, 'virtualport/@type') == 'openvswitch'
    assert one(node, 'virtualport/parameters/@interfaceid') == VIF_ID
    assert one(node, 'target/@dev') == 'tap3f1a2b3c-4d'
    assert one(node, 'mac/@address') == 'fa:16:3e:12:34:56'
    assert one(node, 'mtu/@size') == '1450'


def test_ovs_config_uses_configured_bridge():
    drivers = loader.VifDrivers(make_conf(**{'ovs.integration_bridge': 'br-tenant'}))
    node = render(drivers, vif('ovs'))
    assert one(node, 'source/@bridge') == 'br-tenant'


def test_ethernet_config(drivers):
    node = render(drivers, vif('ethernet', address='FA:16:3E:12:34:56'))
    assert one(node, '@type') == 'ethernet'
    assert one(node, 'target/@dev') == 'tap3f1a2b3c-4d'
    assert one(node, 'target/@managed') == 'no'         # the agent owns the tap
    assert node.xpath('source') == []
    assert one(node, 'mac/@address') == 'fa:16:3e:12:34:56'   # normalized
    assert one(node, 'mtu/@size') == '1450'


def test_custom_devname_prefix(drivers):
    v = vif('ethernet', devname=DELETE, details={'devname_prefix': 'vhu'})
    node = render(drivers, v)
    assert one(node, 'target/@dev') == ('vhu' + VIF_ID)[:14]
    v = vif('ethernet', devname='vhu123', details={'devname_prefix': 'vhu'})
    assert one(render(drivers, v), 'target/@dev') == 'vhu123'


def test_schema_would_catch_a_non_uuid_interfaceid():
    """Why the ovs driver insists on a UUID id: libvirt's grammar does too."""
    iface = config.Interface(type='bridge', mac='fa:16:3e:12:34:56',
                             source_bridge='br-int', target_dev='tapx')
    iface.virtualport = config.VirtualPort(type='openvswitch', interface_id='port-1')
    with pytest.raises(exception.GuestXMLInvalid):
        schema.validate_domain(domain_with(iface).format())


# -- validation: every driver, before anything else --------------------------------

IFNAME_REASON = 'must be 1-14 letters, digits, "_", "." or "-", starting with a letter'
# (label, changes to a good VIF, the exact reason) - never the value itself
BAD_VIFS = [
    ('bad MAC', dict(address='fa:16:3e:12:34'),
     'address must be a MAC address (xx:xx:xx:xx:xx:xx)'),
    ('MAC with junk', dict(address='fa:16:3e:12:34:5g'),
     'address must be a MAC address (xx:xx:xx:xx:xx:xx)'),
    ('multicast MAC', dict(address='01:00:5e:00:00:01'),
     'address must not be a multicast or all-zero MAC address'),
    ('zero MAC', dict(address='00:00:00:00:00:00'),
     'address must not be a multicast or all-zero MAC address'),
    ('no MAC', dict(address=DELETE), 'address must be a string'),
    ('long devname', dict(devname='tap0123456789ab'), 'devname ' + IFNAME_REASON),
    ('devname chars', dict(devname='tap;rm -rf'), 'devname ' + IFNAME_REASON),
    ('devname slash', dict(devname='tap/../x'), 'devname ' + IFNAME_REASON),
    ('devname digit first', dict(devname='0tap', details={'devname_prefix': '0'}),
     'details.devname_prefix ' + IFNAME_REASON),
    ('no tap prefix', dict(devname='eth0'),
     'devname does not start with details.devname_prefix (default tap)'),
    ('reserved prefix', dict(devname='vnet0', details={'devname_prefix': 'vnet'}),
     'devname must not start with a prefix libvirt reserves (vnet, vif, macvtap, macvlan)'),
    ('bad prefix', dict(devname='x y', details={'devname_prefix': 'x y'}),
     'details.devname_prefix ' + IFNAME_REASON),
    ('long prefix', dict(devname='tapxxxxxxxxxxx', details={'devname_prefix': 'tapxxxxxxxxxxx'}),
     'details.devname_prefix must be at most 13 characters'),
    ('MTU too small', dict(network={'bridge': 'br100', 'mtu': 67}),
     'network.mtu must be between 68 and 65535'),
    ('MTU too big', dict(network={'bridge': 'br100', 'mtu': 65536}),
     'network.mtu must be between 68 and 65535'),
    ('MTU not int', dict(network={'bridge': 'br100', 'mtu': '1500'}),
     'network.mtu must be an integer or null'),
    ('MTU bool', dict(network={'bridge': 'br100', 'mtu': True}),
     'network.mtu must be an integer or null'),
    ('bad id', dict(id='../x'), 'id does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$'),
    ('no id', dict(id=DELETE), 'id must be a string'),
    ('network not object', dict(network='br100'), 'network must be an object'),
]


@pytest.mark.parametrize('vif_type', ['bridge', 'ovs', 'ethernet'])
@pytest.mark.parametrize('label,changes,message', BAD_VIFS,
                         ids=[b[0] for b in BAD_VIFS])
def test_bad_vif_refused_by_every_method(drivers, vif_type, label, changes, message):
    v = vif(vif_type, **changes)
    drv = drivers.get(vif_type)
    calls = [lambda: drv.get_config(INSTANCE, v, 'kvm'),
             lambda: drv.plug(INSTANCE, v),
             lambda: drv.unplug(INSTANCE, v),
             lambda: drivers.plug_all(INSTANCE, [v])]
    if vif_type != 'ethernet':      # its post_start does nothing at all
        calls.append(lambda: drv.post_start(INSTANCE, v))
    for call in calls:
        with pytest.raises(exception.VifPlugFailed) as err:
            call()
        assert err.value.kwargs['reason'] == message
        vif_id = err.value.kwargs['vif_id']
        assert vif_id == (VIF_ID if label not in ('bad id', 'no id') else '?')
        for key, value in changes.items():     # the bad value is never echoed
            if isinstance(value, str) and key != 'id':
                assert value not in err.value.message


@pytest.mark.parametrize('bridge,message', [
    (None, 'network.bridge must be a string'),
    ('', 'network.bridge ' + IFNAME_REASON),
    ('br' + 'x' * 13, 'network.bridge ' + IFNAME_REASON),       # 15 characters
    ('br 100', 'network.bridge ' + IFNAME_REASON),
    ('-br', 'network.bridge ' + IFNAME_REASON),
    ('0br', 'network.bridge ' + IFNAME_REASON),
    ('tap3f1a2b3c-4d', 'network.bridge and devname name the same device'),
])
def test_bridge_name_checked(drivers, bridge, message):
    v = vif('bridge', network={'bridge': bridge, 'mtu': 1500})
    with pytest.raises(exception.VifPlugFailed) as err:
        drivers.get('bridge').plug(INSTANCE, v)
    assert err.value.kwargs['reason'] == message


@pytest.mark.parametrize('bridge', ['br100', 'b' * 14, 'br-int', 'br_0.1'])
def test_bridge_names_accepted(drivers, bridge):
    v = vif('bridge', network={'bridge': bridge, 'mtu': 1500})
    assert drivers.get('bridge').get_config(INSTANCE, v, 'kvm').source_bridge == bridge


def test_ovs_needs_uuid_id(drivers):
    v = vif('ovs', id='port-1', devname='tapport-1')
    with pytest.raises(exception.VifPlugFailed) as err:
        drivers.get('ovs').get_config(INSTANCE, v, 'kvm')
    assert err.value.kwargs['reason'] == (
        'id must be a UUID (libvirt needs the OVS interface id to be one)')
    assert err.value.kwargs['vif_id'] == 'port-1'      # the VIF is named


def test_ovs_checks_configured_bridge_name():
    drivers = loader.VifDrivers(make_conf(**{'ovs.integration_bridge': 'br int'}))
    with pytest.raises(exception.VifPlugFailed, match='integration_bridge'):
        drivers.get('ovs').plug(INSTANCE, vif('ovs'))


def test_error_names_vif_and_cause(drivers):
    with pytest.raises(exception.VifPlugFailed) as err:
        drivers.get('bridge').plug(INSTANCE, vif('bridge', address='nope'))
    assert err.value.message == (
        "Failed to plug VIF %s: address must be a MAC address "
        "(xx:xx:xx:xx:xx:xx)" % VIF_ID)
    assert err.value.to_dict()['class'] == 'VifPlugFailed'


@pytest.mark.parametrize('good', ['fa:16:3e:12:34:56', '02:00:00:00:00:01',
                                  'FA:16:3E:AB:CD:EF'])
def test_good_macs(good):
    assert base.check_mac(good) is None


# -- loader ----------------------------------------------------------------------

def test_unknown_type_is_invalid_request(drivers):
    with pytest.raises(exception.InvalidRequest) as err:
        drivers.plug_all(INSTANCE, [vif('bridge'), vif('nosuch', id=str(uuid.uuid4()))])
    assert err.value.field == 'network_info[1].type'
    assert err.value.reason == 'unknown VIF type (installed: bridge, ethernet, ovs)'
    assert 'nosuch' not in err.value.message


@pytest.mark.parametrize('bad_type', [None, '', 3])
def test_missing_type_is_invalid_request(drivers, bad_type):
    with pytest.raises(exception.InvalidRequest) as err:
        drivers.for_network_info([vif(bad_type)])
    assert err.value.field == 'network_info[0].type'


def test_builtin_types_registered(drivers):
    assert {'bridge', 'ovs', 'ethernet'} <= set(drivers.known_types())
    assert drivers.get('ovs') is drivers.get('ovs')          # loaded once


class Recorder(base.VifDriver):
    def __init__(self, conf, calls, fail_on=()):
        super().__init__(conf)
        self.calls = calls
        self.fail_on = fail_on

    def get_config(self, instance, vif, virt_type):
        return self.base_interface(vif, virt_type, 'ethernet')

    def plug(self, instance, vif):
        self.validate(vif)
        self.calls.append(('plug', vif['id']))
        if vif['id'] in self.fail_on:
            raise RuntimeError('boom on %s' % vif['id'])

    def post_start(self, instance, vif):
        self.calls.append(('post_start', vif['id']))

    def unplug(self, instance, vif):
        self.calls.append(('unplug', vif['id']))
        if vif['id'] in self.fail_on:
            raise RuntimeError('unplug boom on %s' % vif['id'])


def recorder_drivers(fail_on=()):
    calls = []
    conf = make_conf()
    drivers = loader.VifDrivers(conf, drivers={'rec': Recorder(conf, calls, fail_on)})
    return drivers, calls


def rec_vif(n, **kw):
    fields = dict(id='vif-%d' % n, address='fa:16:3e:00:00:%02x' % n,
                  devname='tapvif-%d' % n)
    fields.update(kw)
    return vif('rec', **fields)


def test_plug_all_rolls_back_in_reverse():
    drivers, calls = recorder_drivers(fail_on=('vif-3',))
    with pytest.raises(exception.VifPlugFailed) as err:
        drivers.plug_all(INSTANCE, [rec_vif(1), rec_vif(2), rec_vif(3), rec_vif(4)])
    assert err.value.kwargs['vif_id'] == 'vif-3'
    assert 'boom on vif-3' in err.value.message
    assert calls == [('plug', 'vif-1'), ('plug', 'vif-2'), ('plug', 'vif-3'),
                     ('unplug', 'vif-3'), ('unplug', 'vif-2'), ('unplug', 'vif-1')]


def test_plug_all_validates_everything_first():
    drivers, calls = recorder_drivers()
    with pytest.raises(exception.VifPlugFailed, match='MAC'):
        drivers.plug_all(INSTANCE, [rec_vif(1), rec_vif(2, address='zz')])
    assert calls == []


@pytest.mark.parametrize('field', ['devname', 'address'])
def test_plug_all_refuses_duplicates(field):
    drivers, calls = recorder_drivers()
    second = rec_vif(2)
    second[field] = rec_vif(1)[field]
    with pytest.raises(exception.VifPlugFailed, match='also used by VIF vif-1'):
        drivers.plug_all(INSTANCE, [rec_vif(1), second])
    assert calls == []


def test_post_start_and_unplug_all():
    drivers, calls = recorder_drivers(fail_on=('vif-2',))
    nets = [rec_vif(1), rec_vif(2), rec_vif(3)]
    drivers.post_start_all(INSTANCE, nets)
    assert calls == [('post_start', 'vif-1'), ('post_start', 'vif-2'),
                     ('post_start', 'vif-3')]
    del calls[:]
    with pytest.raises(RuntimeError, match='unplug boom on vif-2'):
        drivers.unplug_all(INSTANCE, nets)
    # One failure does not stop the others.
    assert calls == [('unplug', 'vif-3'), ('unplug', 'vif-2'), ('unplug', 'vif-1')]


def test_empty_network_info(drivers):
    assert drivers.plug_all(INSTANCE, []) == []
    drivers.post_start_all(INSTANCE, None)
    drivers.unplug_all(INSTANCE, [])


# -- ovs-vsctl wrapper -----------------------------------------------------------

def test_ovs_vsctl_argv_is_a_list_with_timeout():
    vsctl = ovsdb.OvsVsctl(timeout=7, db='unix:/tmp/x.sock')
    assert vsctl.argv(['br-exists', 'br-int']) == [
        'ovs-vsctl', '--timeout=7', '--db=unix:/tmp/x.sock', 'br-exists', 'br-int']


def test_ovs_vsctl_quotes_external_ids():
    assert ovsdb._ids({'attached-mac': 'fa:16:3e:00:00:01', 'vm-uuid': 'u'}) == [
        'external_ids:attached-mac="fa:16:3e:00:00:01"', 'external_ids:vm-uuid="u"']


def test_ovs_vsctl_missing_binary():
    vsctl = ovsdb.OvsVsctl(binary='/nonexistent/ovs-vsctl')
    with pytest.raises(ovsdb.OvsError, match='not found'):
        vsctl.br_exists('br-int')


def test_ovs_json_rows():
    out = ('{"data":[[["map",[["iface-id","x"],["vm-uuid","y"]]]]],'
           '"headings":["external_ids"]}')
    assert ovsdb._first_row(out, ('external_ids',)) == {
        'external_ids': {'iface-id': 'x', 'vm-uuid': 'y'}}
    out = '{"data":[[-1,["set",[]]]],"headings":["ofport","error"]}'
    assert ovsdb._first_row(out, ('ofport', 'error')) == {'ofport': -1, 'error': None}
    assert ovsdb._first_row('', ('ofport',)) is None
