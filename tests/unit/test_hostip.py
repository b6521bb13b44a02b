"""``[DEFAULT] my_ip``'s default: this host's IPv4 address, without psutil."""

import ipaddress

from compute_agent.conf import hostip

ROUTES = ('Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n'
          '%s\t%s\t0102A8C0\t0003\t0\t0\t0\t00000000\n')


def test_my_ipv4_is_an_ipv4_address():
    assert ipaddress.IPv4Address(hostip.my_ipv4())


def test_default_route_interface_address(tmp_path):
    routes = tmp_path / 'route'
    routes.write_text(ROUTES % ('lo', '00000000'))
    assert hostip._default_route_address(str(routes)) == '127.0.0.1'


def test_no_default_route_or_table_is_localhost(tmp_path):
    routes = tmp_path / 'route'
    routes.write_text(ROUTES % ('eth9', '0000A8C0'))
    assert hostip._default_route_address(str(routes)) == hostip.LOCALHOST
    assert hostip._default_route_address(str(tmp_path / 'none')) == \
        hostip.LOCALHOST


def test_unknown_or_bad_interface_is_localhost():
    assert hostip._interface_ipv4('no-such-if0') == hostip.LOCALHOST
    assert hostip._interface_ipv4('bad\0name') == hostip.LOCALHOST
