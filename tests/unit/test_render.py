"""compute-agent-render: the dry run of a spawn on this host's config."""

import json
import subprocess
import sys

import pytest
from lxml import etree

from compute_agent import exception
from compute_agent.cmd import render
from compute_agent.virt import builder

RENDER = [sys.executable, '-m', 'compute_agent.cmd.render']
UUID = '6f1b1c1e-1111-4222-8333-444455556666'


def _request(**instance):
    return {'instance': dict({'uuid': UUID, 'name': 'inst-1', 'image_ref': 'img1',
                              'flavor': {'memory_mb': 128, 'vcpus': 1, 'root_gb': 1,
                                         'ephemeral_gb': 1, 'swap': 64},
                              'config_drive': True}, **instance),
            'image_meta': {'id': 'img1', 'disk_format': 'qcow2'},
            'network_info': [{'id': '11111111-2222-4333-8444-000000000001',
                              'address': 'fa:16:3e:00:00:01', 'type': 'bridge',
                              'devname': 'tap1', 'network': {'bridge': 'br100',
                                                             'mtu': 1500}}]}


@pytest.fixture
def files(tmp_path):
    conf = tmp_path / 'agent.conf'
    conf.write_text('[DEFAULT]\nlibvirt_type = qemu\ninstances_path = /srv/i\n')

    def request(body):
        path = tmp_path / 'req.json'
        path.write_text(json.dumps(body))
        return ['--config-file', str(conf), '--request', str(path)]
    return request


def _run(argv):
    return subprocess.run(RENDER + argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize('rescue', [False, True])
def test_prints_valid_domain_xml(files, rescue):
    proc = _run(files(_request()) + (['--rescue'] if rescue else []))
    assert proc.returncode == 0, proc.stderr
    dom = etree.fromstring(proc.stdout.encode())
    assert dom.get('type') == 'qemu'          # the 2012 option name still works
    sources = dom.xpath('devices/disk/source/@file')
    assert sources[0] == '/srv/i/inst-1/' + ('disk.rescue' if rescue else 'disk')
    assert dom.xpath('devices/interface/source/@bridge') == ['br100']


@pytest.mark.parametrize('change,field', [
    ({'name': '../x'}, 'instance.name'),
    ({'flavor': {'memory_mb': 0, 'vcpus': 1, 'root_gb': 1}}, 'instance.flavor.memory_mb'),
    ({'uuid': 'not-a-uuid'}, 'instance.uuid'),
])
def test_bad_request_exits_2_with_one_line_naming_the_field(files, change, field):
    proc = _run(files(_request(**change)))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('compute-agent-render: %s: ' % field), \
        proc.stderr


def test_unknown_vif_type_exits_2(files):
    body = _request()
    body['network_info'][0]['type'] = 'nope'
    proc = _run(files(body))
    assert proc.returncode == 2 and 'network_info[0].type' in proc.stderr


def test_schema_failure_is_a_bug_exit_1(files, monkeypatch, capsys):
    """A domain libvirt's schema rejects is the agent's bug: exit 1."""
    real_build = builder.build

    def broken_build(*args, **kwargs):
        plan = real_build(*args, **kwargs)
        plan.domain.vcpus = 0             # <vcpu>0</vcpu>: not in domain.rng
        plan.domain.os.type = 'bogus'
        return plan
    monkeypatch.setattr(builder, 'build', broken_build)
    rc = render.main(files(_request()))
    err = capsys.readouterr().err
    assert rc == 1 and 'BUG' in err and 'validate' in err


def test_render_function_raises_for_bad_input():
    from compute_agent import conf as ca_conf
    from oslo_config import cfg
    conf = ca_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent')
    with pytest.raises(exception.InvalidRequest):
        render.render(conf, _request(name=''))
