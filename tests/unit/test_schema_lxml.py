"""lxml's bundled libxml2 validates domains as the system's xmllint does.

requirements.txt once capped lxml below 5.4 because lxml 6's libxml2 (2.14)
was said to reject valid domains with many devices (an <interleave>
regression). It does not reproduce (lxml 6.2 / libxml2 2.14.6): this test
keeps checking it with the newest lxml the requirements allow, on the
fullest domain the builder makes and on one with dozens more devices,
against xmllint from libxml2-utils and libvirt's own domain.rng.
"""

import copy
import os
import shutil
import subprocess

import pytest
from lxml import etree

from compute_agent.virt import schema

try:
    from tests.unit import builder_fixtures as bf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf


def _fullest_domain():
    conf = bf.make_conf('kvm', {'vnc.enabled': True,
                                'libvirt.rng_dev_path': '/dev/urandom'})
    plan = bf.build(conf, bf.make_request(
        kernel_id='kernel-1', ramdisk_id='ramdisk-1', config_drive=True,
        flavor={'ephemeral_gb': 1, 'swap': 64}, network_info=bf.all_vifs(),
        block_device_info=bf.bdi(ephemerals=[bf.ephemeral(1, 'vdd')],
                                 volumes=bf.all_volumes('vd'))))
    return plan.domain.format()


def _many_devices(node, copies=24):
    node = copy.deepcopy(node)
    devices = node.find('devices')
    nic = devices.find('interface')
    for i in range(copies):
        extra = copy.deepcopy(nic)
        extra.find('mac').set('address', 'fa:16:3e:00:01:%02x' % i)
        target = extra.find('target')
        if target is not None:
            target.set('dev', 'tapx%02d' % i)
        devices.append(extra)
    return node


def _xmllint_accepts(node, tmp_path):
    path = tmp_path / 'domain.xml'
    path.write_bytes(etree.tostring(node))
    proc = subprocess.run(
        ['xmllint', '--noout', '--relaxng',
         os.path.join(schema.SCHEMA_DIR, 'domain.rng'), str(path)],
        capture_output=True, text=True, timeout=60)
    return proc.returncode == 0


@pytest.mark.parametrize('shape', ['fullest', 'many-devices', 'invalid'])
def test_lxml_and_xmllint_agree(tmp_path, shape):
    if not shutil.which('xmllint'):
        pytest.fail('xmllint (libxml2-utils) is needed to compare validators')
    node = _fullest_domain()
    if shape == 'many-devices':
        node = _many_devices(node)
        assert len(node.findall('devices/interface')) > 24
    elif shape == 'invalid':
        etree.SubElement(node.find('devices'), 'no-such-device')
    by_lxml = schema._relaxng('domain.rng').validate(node)
    assert by_lxml == _xmllint_accepts(node, tmp_path)
    assert by_lxml == (shape != 'invalid')
