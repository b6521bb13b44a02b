"""compute-agent-ctl against a running server (with the test dispatcher)."""

import argparse
import json
import socket
import uuid

import kombu
import pytest

try:
    from tests.functional import rpc_fixtures
    from tests.functional.rpc_fixtures import agents  # noqa: F401
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import rpc_fixtures
    from rpc_fixtures import agents  # noqa: F401

from compute_agent.cmd import ctl
from compute_agent.rpc import client as client_mod

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
    """ctl's main (``--timeout 10`` unless args give one after it)."""
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


# -- human output and options anywhere -------------------------------------------

def test_list_and_info_print_tables_and_json_goes_anywhere(ctl_conf, capsys):
    agent, conf_file = ctl_conf
    u = str(uuid.uuid4())
    code, _, err = run(capsys, conf_file, 'spawn', '--uuid', u, '--name', 'vm3',
                       '--image', 'img', '--json')
    assert code == 0, err
    code, out, _ = run(capsys, conf_file, 'list')
    header, rule, row = out.splitlines()
    assert header.split() == ['UUID', 'NAME', 'VM_STATE', 'TASK_STATE',
                              'POWER_STATE', 'HOST']
    assert set(rule) <= {'-', ' '}
    assert row.split()[:3] == [u, 'vm3', 'active']
    code, out, _ = run(capsys, conf_file, 'info', u)
    assert code == 0 and out.splitlines()[0].split() == ['FIELD', 'VALUE']
    assert ['vm_state', 'active'] in [line.split() for line in out.splitlines()]
    code, out, _ = run(capsys, conf_file, 'info', u, '--json')
    assert code == 0 and json.loads(out)['uuid'] == u


# -- every failure: one line, a documented exit status ------------------------------

def test_broker_down_one_line_exit_4(capsys, tmp_path):
    with socket.socket() as s:       # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    conf = tmp_path / 'ctl.conf'
    conf.write_text('[DEFAULT]\ntransport_url = rabbit://guest:s3cret@127.0.0.1:%d/\n'
                    % port)
    for args in (['ping'], ['list', '--json'], ['dead-letters', 'list']):
        code, out, err = run(capsys, str(conf), *args)
        assert code == ctl.EXIT_BROKER == 4, err
        assert out == '' and err.count('\n') == 1, err
        assert err.startswith('error: broker unreachable at 127.0.0.1:%d' % port)
        assert 's3cret' not in err


def test_missing_config_one_line_exit_3(capsys, tmp_path):
    code, out, err = run(capsys, str(tmp_path / 'nope.conf'), 'ping')
    assert code == ctl.EXIT_CONFIG == 3
    assert out == '' and err.count('\n') == 1
    assert err.startswith('error: configuration:') and 'nope.conf' in err


def test_bad_request_file_one_line_exit_2(ctl_conf, capsys, tmp_path):
    agent, conf_file = ctl_conf
    bad = tmp_path / 'bad.json'
    bad.write_text('{"instance": ')
    for path, words in ((bad, 'not valid JSON'),
                        (tmp_path / 'missing.json', 'No such file')):
        code, out, err = run(capsys, conf_file, 'spawn', '--request', str(path))
        assert code == ctl.EXIT_USAGE == 2
        assert out == '' and err.count('\n') == 1 and words in err, err
        assert err.startswith('error: request file %s' % path)


def test_remote_error_timeout_unroutable_usage(ctl_conf, capsys):
    agent, conf_file = ctl_conf
    code, _, err = run(capsys, conf_file, 'info', str(uuid.uuid4()))
    assert code == ctl.EXIT_REMOTE == 1 and err.count('\n') == 1
    assert err.startswith('error: InstanceNotFound')
    code, _, err = run(capsys, conf_file, '--host', 'nobody-' + uuid.uuid4().hex[:6],
                       'ping')
    assert code == ctl.EXIT_NO_AGENT and err.count('\n') == 1, err
    code, _, err = run(capsys, conf_file, 'no-such-command')
    assert code == ctl.EXIT_USAGE and err.count('\n') == 1
    assert err.startswith('error: argument COMMAND: invalid choice')


def test_timeout_exit_5(ctl_conf, capsys):
    """The agent's queue exists but nobody consumes it: no reply, exit 5."""
    agent, conf_file = ctl_conf
    agent.stop()
    code, _, err = run(capsys, conf_file, '--timeout', '1', 'ping')
    assert code == ctl.EXIT_TIMEOUT == 5 and err.count('\n') == 1
    assert err.startswith('error: no reply to ping')


def test_every_subcommand_has_help(capsys):
    parser = ctl.build_parser()
    sub = next(a for a in parser._actions
               if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert set(helps) == set(sub.choices) and all(helps.values()), helps
    for name in sub.choices:
        with pytest.raises(SystemExit) as exc:
            ctl.main([name, '--help'])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert 'exit status:' in out and '5  timeout' in out


# -- dead letters on the real broker -------------------------------------------------

def _dead(capsys, conf_file, *args):
    code, out, err = run(capsys, conf_file, '--json', 'dead-letters', *args)
    assert code == 0, err
    return json.loads(out)


def test_dead_letters_list_requeue_purge(ctl_conf, capsys):
    agent, conf_file = ctl_conf
    conf = agent.conf
    u = str(uuid.uuid4())
    with client_mod.AgentClient(conf.transport_url, conf.host,
                                topic=conf.rpc.topic,
                                exchange=conf.control_exchange) as client:
        # Two casts the agent rejects: an unknown method and a spawn whose
        # instance has no name (invalid) - both dead-lettered.
        first = client.cast('no_such_method', instance_uuid=u)
        second = client.cast('spawn', instance={'uuid': u, 'flavor': {}},
                             image_meta={'id': 'img'})
    dead_queue = conf.rpc.topic + '.dead'
    rpc_fixtures.wait_for(lambda: _depth(conf, dead_queue) == 2, timeout=20,
                          message='two dead letters')
    listed = _dead(capsys, conf_file, 'list')
    assert [d['id'] for d in listed] == [first, second]
    assert [d['method'] for d in listed] == ['no_such_method', 'spawn']
    assert all(d['instance'] == u for d in listed)
    assert all(d['reason'] == 'rejected' for d in listed)
    assert all(d['queue'] == '%s.%s' % (conf.rpc.topic, conf.host) for d in listed)
    assert all(0 <= d['age_s'] < 600 for d in listed)
    # list left them in place; the table shows the same, one row each.
    code, out, _ = run(capsys, conf_file, 'dead-letters', 'list')
    assert code == 0 and out.splitlines()[0].split() == [
        'ID', 'METHOD', 'INSTANCE', 'REASON', 'AGE_S']
    assert len(out.splitlines()) == 4 and _depth(conf, dead_queue) == 2

    # requeue one: the agent gets it again and rejects it again.
    assert agent.server.stats['dead_lettered'] == 2
    done = _dead(capsys, conf_file, 'requeue', first)
    assert [d['id'] for d in done] == [first]
    rpc_fixtures.wait_for(lambda: agent.server.stats['dead_lettered'] == 3,
                          timeout=20, message='the requeued message rejected again')
    rpc_fixtures.wait_for(lambda: _depth(conf, dead_queue) == 2, timeout=20,
                          message='two dead letters again')
    assert sorted(d['id'] for d in _dead(capsys, conf_file, 'list')) == sorted(
        [first, second])
    code, _, err = run(capsys, conf_file, 'dead-letters', 'purge')
    assert code == ctl.EXIT_USAGE and 'needs message ids or --all' in err
    code, _, err = run(capsys, conf_file, 'dead-letters', 'purge', 'nope')
    assert code == ctl.EXIT_USAGE and 'no dead letter with id nope' in err
    purged = _dead(capsys, conf_file, 'purge', '--all')
    assert sorted(d['id'] for d in purged) == sorted([first, second])
    assert _depth(conf, dead_queue) == 0


def test_dead_letters_requeue_reaches_the_agent_queue(ctl_conf, capsys):
    """With the agent stopped, a requeued letter waits in its own queue."""
    agent, conf_file = ctl_conf
    conf = agent.conf
    with client_mod.AgentClient(conf.transport_url, conf.host,
                                topic=conf.rpc.topic,
                                exchange=conf.control_exchange) as client:
        uid = client.cast('no_such_method')
    dead_queue = conf.rpc.topic + '.dead'
    rpc_fixtures.wait_for(lambda: _depth(conf, dead_queue) == 1, timeout=20,
                          message='a dead letter')
    agent.stop()
    assert [d['id'] for d in _dead(capsys, conf_file, 'requeue',
                                   '--all')] == [uid]
    host_queue = '%s.%s' % (conf.rpc.topic, conf.host)
    assert _depth(conf, dead_queue) == 0 and _depth(conf, host_queue) == 1


def _depth(conf, queue):
    with kombu.Connection(rpc_fixtures.kombu_url(conf.transport_url)) as c:
        return c.default_channel.queue_declare(queue, passive=True).message_count


def test_a_reader_that_stops_early_is_not_a_broker_error(ctl_conf):
    """``ctl info ... | grep -q x``: the reader closes the pipe after its
    match; ctl ends quietly with 0 (a broker error line and exit 4 here
    once failed the quick start under ``set -o pipefail``)."""
    import os
    import subprocess
    import sys
    _agent, conf_file = ctl_conf
    read_end, write_end = os.pipe()
    os.close(read_end)                  # the reader is already gone
    try:
        proc = subprocess.run(
            [sys.executable, '-m', 'compute_agent.cmd.ctl', '--config-file',
             conf_file, '--timeout', '10', 'ping'],
            stdout=write_end, stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr.decode()) == (0, '')
