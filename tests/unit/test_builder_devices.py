"""The guest builder's devices: VIFs, graphics, balloon, RNG and the guest-agent channel, by XPath.

Each test builds a plan from a request (``builder_fixtures.make_request``)
and a fresh configuration, then reads the formatted XML back with XPath.
"""

import pytest

from compute_agent import exception

try:
    from tests.unit import builder_fixtures as bf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf

one, xp = bf.one, bf.xp
plan_for, node_for = bf.plan_for, bf.node_for
assert_valid_and_defined = bf.assert_valid_and_defined


# -- VIFs -------------------------------------------------------------------------

@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
def test_vifs(virt_type):
    conf = bf.make_conf(virt_type, {'ovs.integration_bridge': 'br-test'})
    node, plan = node_for(conf=conf, network_info=bf.all_vifs())
    bridge, ovs, eth = xp(node, 'devices/interface')
    model = ['virtio'] if virt_type in bf.HVM_TYPES else []

    assert bridge.get('type') == 'bridge'
    assert one(bridge, 'mac/@address') == 'fa:16:3e:00:00:01'
    assert one(bridge, 'source/@bridge') == 'br100'
    assert one(bridge, 'target/@dev') == 'tapbr1'
    assert one(bridge, 'mtu/@size') == '1500'
    assert xp(bridge, 'model/@type') == model
    assert xp(bridge, 'virtualport') == []

    assert ovs.get('type') == 'bridge'
    assert one(ovs, 'mac/@address') == 'fa:16:3e:00:00:02'
    assert one(ovs, 'source/@bridge') == 'br-test'
    assert one(ovs, 'virtualport/@type') == 'openvswitch'
    assert one(ovs, 'virtualport/parameters/@interfaceid') == bf.VIF_IDS[1]
    assert one(ovs, 'target/@dev') == ('tap' + bf.VIF_IDS[1])[:14]
    assert one(ovs, 'mtu/@size') == '1450'
    assert xp(ovs, 'model/@type') == model

    assert eth.get('type') == 'ethernet'
    assert one(eth, 'mac/@address') == 'fa:16:3e:00:00:03'
    assert one(eth, 'target/@dev') == 'tapeth3'
    assert one(eth, 'target/@managed') == 'no'
    assert xp(eth, 'source | virtualport | mtu') == []
    assert xp(eth, 'model/@type') == model
    assert_valid_and_defined(plan)


def test_no_network_info_needs_no_vif_drivers():
    from compute_agent.virt import builder
    conf = bf.make_conf('kvm')
    plan = builder.build(conf, **bf.make_request())
    assert bf.xml_of(plan).xpath('devices/interface') == []


@pytest.mark.parametrize('position', [0, 2])
def test_unknown_vif_type_is_an_invalid_request(position):
    vifs = bf.all_vifs()
    vifs[position]['type'] = 'no_such_vif_type'
    with pytest.raises(exception.InvalidRequest) as err:
        plan_for('kvm', network_info=vifs)
    assert err.value.field == 'network_info[%d].type' % position
    assert err.value.reason == 'unknown VIF type (installed: bridge, ethernet, ovs)'


# -- VNC / input --------------------------------------------------------------------

@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('vnc', [True, False], ids=['vnc', 'no-vnc'])
@pytest.mark.parametrize('tablet', [True, False], ids=['tablet', 'no-tablet'])
def test_graphics(virt_type, vnc, tablet):
    conf = bf.make_conf(virt_type, {'vnc.enabled': vnc, 'vnc.keymap': 'de',
                                    'vnc.server_listen': '0.0.0.0',
                                    'libvirt.use_usb_tablet': tablet})
    node, plan = node_for(conf=conf)
    graphical = vnc and virt_type not in ('lxc', 'uml')
    if graphical:
        g = one(node, 'devices/graphics')
        assert (g.get('type'), g.get('autoport')) == ('vnc', 'yes')
        assert (g.get('keymap'), g.get('listen')) == ('de', '0.0.0.0')
        assert xp(g, '@port') == []
    else:
        assert xp(node, 'devices/graphics') == []
    if graphical and tablet and virt_type in bf.HVM_TYPES:
        assert [(i.get('type'), i.get('bus')) for i in xp(node, 'devices/input')] == [
            ('tablet', 'usb')]
    else:
        assert xp(node, 'devices/input') == []
    assert_valid_and_defined(plan)


def test_vnc_defaults():
    node, _ = node_for('kvm')
    g = one(node, 'devices/graphics')
    assert (g.get('keymap'), g.get('listen')) == ('en-us', '127.0.0.1')


# -- modern options ----------------------------------------------------------------

@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('balloon', [True, False])
def test_memballoon(virt_type, balloon):
    conf = bf.make_conf(virt_type, {'libvirt.mem_balloon': balloon})
    node, plan = node_for(conf=conf)
    if virt_type not in bf.HVM_TYPES:
        assert xp(node, 'devices/memballoon') == []
    elif balloon:
        mb = one(node, 'devices/memballoon')
        assert mb.get('model') == 'virtio'
        assert one(mb, 'stats/@period') == '10'
    else:
        mb = one(node, 'devices/memballoon')
        assert mb.get('model') == 'none' and len(mb) == 0
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('path', [None, '/dev/urandom', '/dev/hwrng'])
def test_rng(virt_type, path):
    conf = bf.make_conf(virt_type, {'libvirt.rng_dev_path': path})
    node, plan = node_for(conf=conf)
    if path and virt_type in bf.HVM_TYPES:
        rng = one(node, 'devices/rng')
        assert rng.get('model') == 'virtio'
        assert one(rng, 'backend/@model') == 'random'
        assert one(rng, 'backend/text()') == path
    else:
        assert xp(node, 'devices/rng') == []
    assert_valid_and_defined(plan)


# -- guest agent channel (issue 15) ---------------------------------------------------

@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('enabled', [True, False])
def test_guest_agent_channel(virt_type, enabled):
    conf = bf.make_conf(virt_type, {'libvirt.guest_agent': enabled})
    node, plan = node_for(conf=conf)
    channels = xp(node, 'devices/channel')
    if enabled and virt_type in bf.HVM_TYPES:
        assert len(channels) == 1
        assert channels[0].get('type') == 'unix'
        assert one(channels[0], 'target/@type') == 'virtio'
        assert one(channels[0], 'target/@name') == 'org.qemu.guest_agent.0'
        assert xp(channels[0], 'source') == []    # libvirt picks the socket
    else:
        assert channels == []
    assert_valid_and_defined(plan)


def test_guest_agent_channel_is_on_by_default():
    node, _ = node_for('qemu')
    assert one(node, 'devices/channel/target/@name') == 'org.qemu.guest_agent.0'


@pytest.mark.parametrize('rescue', [False, True])
def test_guest_agent_channel_in_rescue_guest(rescue):
    node, plan = node_for('kvm', rescue=rescue)
    assert len(xp(node, 'devices/channel')) == 1
    assert_valid_and_defined(plan)


def test_guest_agent_channel_q35_keeps_spare_ports():
    """The channel's virtio-serial controller takes a root port of its own;
    the spare ports for hot-plug are still all free."""
    base = {'libvirt.hw_machine_type': 'q35', 'libvirt.num_pcie_ports': 2}
    with_ga = node_for(conf=bf.make_conf('kvm', dict(base)))[0]
    without = node_for(conf=bf.make_conf(
        'kvm', dict(base, **{'libvirt.guest_agent': False})))[0]
    idx = [int(i) for i in xp(with_ga, "devices/controller[@model='pcie-root-port']/@index")]
    idx0 = [int(i) for i in xp(without, "devices/controller[@model='pcie-root-port']/@index")]
    assert len(idx) == len(idx0) == 2
    assert min(idx) == min(idx0) + 1
