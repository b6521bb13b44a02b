"""compute-agent-ctl against a running server (with the test dispatcher)."""

import json
import uuid

import pytest

try:
    from tests.functional.rpc_fixtures import agents  # noqa: F401
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from rpc_fixtures import agents  # noqa: F401

from compute_agent.cmd import ctl

pytestmark = [pytest.mark.rabbit]


@pytest.fixture
def ctl_conf(agents, tmp_path):  # noqa: F811
    agent = agents()
    conf = agent.conf
    path = tmp_path / 'ctl.conf'
    path.write_text(
        '[DEFAULT]\ntransport_url = %s\nhost = %s\ncontrol_exchange = %s\n'
        '[rpc]\ntopic = %s\nstate_topic = %s\n' % (
            conf.transport_url, conf.host, conf.control_exchange,
            conf.rpc.topic, conf.rpc.state_topic))
    return agent, str(path)


def run(capsys, conf_file, *args):
    code = ctl.main(['--config-file', conf_file, '--timeout', '10'] +
                    list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_ping_list_info(ctl_conf, capsys):
    agent, conf_file = ctl_conf
    code, out, _ = run(capsys, conf_file, '--json', 'ping')
    assert code == 0 and json.loads(out)['host'] == agent.conf.host
    code, _, err = run(capsys, conf_file, 'info', str(uuid.uuid4()))
    assert code == 1 and 'InstanceNotFound' in err


def test_spawn_wait_prints_reports(ctl_conf, capsys, tmp_path):
    agent, conf_file = ctl_conf
    u = str(uuid.uuid4())
    request = tmp_path / 'spawn.json'
    request.write_text(json.dumps({
        'instance': {'uuid': u, 'name': 'vm1',
                     'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 0}},
        'image_meta': {'id': 'img'}}))
    code, out, _ = run(capsys, conf_file, 'spawn', '--request', str(request),
                       '--wait')
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert 'spawn.start' in lines[0] and 'vm_state=building' in lines[0]
    assert 'spawn.end' in lines[1] and 'vm_state=active' in lines[1]
    code, out, _ = run(capsys, conf_file, '--json', 'info', u)
    assert code == 0 and json.loads(out)['vm_state'] == 'active'
    code, out, _ = run(capsys, conf_file, '--json', 'list')
    assert [r['uuid'] for r in json.loads(out)] == [u]
    # The test dispatcher has no reboot: an error report, exit status 1.
    code, out, _ = run(capsys, conf_file, 'reboot', '--hard', u, '--wait',
                       '--instance', str(request))
    assert code == 1 and 'reboot.error' in out and 'vm_state=error' in out


def test_spawn_flags_as_a_call(ctl_conf, capsys):
    agent, conf_file = ctl_conf
    u = str(uuid.uuid4())
    code, out, _ = run(capsys, conf_file, '--json', 'spawn', '--uuid', u,
                       '--name', 'vm2', '--image', 'img', '--memory-mb', '128')
    assert code == 0 and json.loads(out)['uuid'] == u
