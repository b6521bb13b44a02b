"""Config drive: built with pycdlib, read back with pycdlib and blkid."""

import base64
import io
import json
import os
import re
import subprocess

import pycdlib
import pytest

from compute_agent import exception
from compute_agent.virt import configdrive

INSTANCE = {
    'uuid': '6f2a2f6e-3c53-4d5b-9d4a-1f0c2b7e9a10',
    'name': 'vm-1',
    'hostname': 'vm-one',
    'metadata': {'role': 'test'},
    'key_data': 'ssh-ed25519 AAAA test@host',
    'user_data': base64.b64encode(b'#!/bin/sh\necho hi\n').decode(),
    'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 0},
}

NETWORK_INFO = [
    {'id': '0123456789abcdef-port-1', 'address': 'fa:16:3e:12:34:56', 'type': 'bridge',
     'devname': 'tap01234567-89',
     'network': {'id': 'net-1', 'bridge': 'br100', 'mtu': 1450, 'subnets': [
         {'cidr': '10.0.0.0/24', 'gateway': '10.0.0.1',
          'ips': [{'address': '10.0.0.5'}], 'dns': ['10.0.0.2', '8.8.8.8']},
         {'cidr': 'fd00::/64', 'gateway': 'fd00::1',
          'ips': [{'address': 'fd00::5'}], 'dns': ['fd00::2']}]}},
    {'id': 'abcdefabcdef0000-port-2', 'address': 'fa:16:3e:00:00:02', 'type': 'ovs',
     'network': {'id': 'net-2', 'subnets': [
         {'cidr': '192.168.7.0/25', 'ips': [{'address': '192.168.7.9'}],
          'dns': ['8.8.8.8']}]}},
]


def read(iso_path, path):
    iso = pycdlib.PyCdlib()
    iso.open(iso_path)
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path='/' + path)
        joliet = io.BytesIO()
        iso.get_file_from_iso_fp(joliet, joliet_path='/' + path)
        assert joliet.getvalue() == out.getvalue()
        return out.getvalue()
    finally:
        iso.close()


def listing(iso_path):
    iso = pycdlib.PyCdlib()
    iso.open(iso_path)
    try:
        return sorted(os.path.join(d, f)[1:] for d, _, files in iso.walk(rr_path='/')
                      for f in files)
    finally:
        iso.close()


@pytest.fixture
def drive(tmp_path):
    return configdrive.build_config_drive(
        str(tmp_path / 'disk.config'), INSTANCE, NETWORK_INFO, admin_password='s3cret',
        injected_files=[['/etc/motd', base64.b64encode(b'hello').decode()],
                        {'path': '/root/x', 'contents': base64.b64encode(b'\0\1').decode()}])


def test_layout_and_label(drive, tmp_path):
    names = ['meta_data.json', 'network_data.json', 'user_data']
    assert listing(drive) == sorted(
        [f'openstack/{v}/{n}' for v in ('2012-08-10', 'latest') for n in names]
        + ['openstack/content/0000', 'openstack/content/0001'])
    label = subprocess.run(['blkid', '-o', 'value', '-s', 'LABEL', drive],
                           capture_output=True, text=True).stdout.strip()
    assert label == 'config-2'
    assert oct(os.stat(drive).st_mode & 0o777) == '0o600'   # holds admin_pass
    assert os.listdir(tmp_path) == ['disk.config']          # no temp file left
    for n in names:
        assert read(drive, f'openstack/latest/{n}') == read(drive, f'openstack/2012-08-10/{n}')


def test_meta_data(drive):
    raw = read(drive, 'openstack/latest/meta_data.json')
    md = json.loads(raw)
    assert list(md) == ['uuid', 'name', 'hostname', 'launch_index', 'availability_zone',
                        'meta', 'public_keys', 'files', 'admin_pass']
    assert md['uuid'] == INSTANCE['uuid'] and md['hostname'] == 'vm-one'
    assert md['launch_index'] == 0 and md['availability_zone'] is None
    assert md['meta'] == {'role': 'test'}
    assert md['public_keys'] == {'default': INSTANCE['key_data']}
    assert md['admin_pass'] == 's3cret'
    assert md['files'] == [{'path': '/etc/motd', 'content_path': '/content/0000'},
                           {'path': '/root/x', 'content_path': '/content/0001'}]
    assert read(drive, 'openstack/content/0000') == b'hello'
    assert read(drive, 'openstack/content/0001') == b'\0\1'
    assert read(drive, 'openstack/latest/user_data') == b'#!/bin/sh\necho hi\n'
    assert b', ' not in raw and b'": ' not in raw                 # compact


def test_network_data(drive):
    raw = read(drive, 'openstack/latest/network_data.json')
    nd = json.loads(raw)
    assert list(nd) == ['links', 'networks', 'services']
    assert nd['links'] == [
        {'id': 'tap01234567-89', 'type': 'vif', 'ethernet_mac_address': 'fa:16:3e:12:34:56',
         'mtu': 1450, 'vif_id': '0123456789abcdef-port-1'},
        {'id': 'tapabcdefabcde', 'type': 'vif', 'ethernet_mac_address': 'fa:16:3e:00:00:02',
         'mtu': None, 'vif_id': 'abcdefabcdef0000-port-2'}]
    assert [list(n) for n in nd['networks']] == [
        ['id', 'type', 'link', 'ip_address', 'netmask', 'routes', 'network_id']] * 2
    assert nd['networks'] == [
        {'id': 'network0', 'type': 'ipv4', 'link': 'tap01234567-89', 'ip_address': '10.0.0.5',
         'netmask': '255.255.255.0',
         'routes': [{'network': '0.0.0.0', 'netmask': '0.0.0.0', 'gateway': '10.0.0.1'}],
         'network_id': 'net-1'},
        {'id': 'network1', 'type': 'ipv4', 'link': 'tapabcdefabcde', 'ip_address': '192.168.7.9',
         'netmask': '255.255.255.128', 'routes': [], 'network_id': 'net-2'}]
    assert nd['services'] == [{'type': 'dns', 'address': a}
                              for a in ('10.0.0.2', '8.8.8.8', 'fd00::2')]


def test_minimal_instance(tmp_path):
    path = configdrive.build_config_drive(
        str(tmp_path / 'cd.iso'), {'uuid': 'u-1', 'name': 'vm'}, [])
    md = json.loads(read(path, 'openstack/latest/meta_data.json'))
    assert md == {'uuid': 'u-1', 'name': 'vm', 'hostname': 'vm', 'launch_index': 0,
                  'availability_zone': None, 'meta': {}}
    assert 'openstack/latest/user_data' not in listing(path)
    assert json.loads(read(path, 'openstack/latest/network_data.json')) == {
        'links': [], 'networks': [], 'services': []}


def test_extra_md_and_attribute_instance(tmp_path):
    class Inst:
        uuid, name, metadata = 'u-2', 'vm2', {'a': 'b'}
    path = configdrive.build_config_drive(
        str(tmp_path / 'cd.iso'), Inst(), None, extra_md={'project_id': 'p'})
    md = json.loads(read(path, 'openstack/latest/meta_data.json'))
    assert md['meta'] == {'a': 'b'} and md['project_id'] == 'p'
    assert 'admin_pass' not in md and 'public_keys' not in md and 'files' not in md


@pytest.mark.parametrize('kwargs', [
    {'injected_files': [['/x', 'not base64!']]},
    {'injected_files': [['/x']]},
    {'injected_files': [{'contents': 'aGk='}]},
    {'instance': dict(INSTANCE, user_data='%%%')},
])
def test_bad_input_leaves_nothing(tmp_path, kwargs):
    args = {'instance': INSTANCE, 'network_info': []}
    args.update(kwargs)
    with pytest.raises(exception.InvalidRequest):
        configdrive.build_config_drive(str(tmp_path / 'cd.iso'), **args)
    assert os.listdir(tmp_path) == []


def test_direct_vnic_is_phy_and_no_subnets():
    nd = configdrive.network_data([{'id': 'p' * 20, 'address': 'fa:16:3e:00:00:09',
                                    'vnic_type': 'direct', 'network': {'id': 'n'}}])
    assert nd['links'][0]['type'] == 'phy' and nd['links'][0]['id'] == 'tap' + 'p' * 11
    assert nd['networks'] == [] and nd['services'] == []


def test_primary_iso_names_are_strict(drive):
    iso = pycdlib.PyCdlib()
    iso.open(drive)
    try:
        names = [os.path.join(d, f) for d, _, files in iso.walk(iso_path='/') for f in files]
    finally:
        iso.close()
    assert '/OPENSTACK/2012_08_10/META_DATA.JSON;1' in names
    assert all(re.fullmatch(r'[A-Z0-9_/]+\.[A-Z0-9_]*;1', n) for n in names)
