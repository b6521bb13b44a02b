"""The real agent, the real broker: nothing unpublishable stays in the outbox
(issue 12 item 2) and one name is one instance (item 3).

The agent runs against libvirt's in-process ``test:///default`` driver (see
``test_service.Agent``): what is tested here is the journal, the outbox and
the consume loop, with real instance directories and qcow2 disks made by
the real agent; booting QEMU guests would add nothing but minutes.
"""

import os
import signal
import socket
import sqlite3
import time
import urllib.request
import uuid as uuidlib

import kombu
import pytest

try:
    from tests.functional import rpc_fixtures
    from tests.functional.test_service import Agent
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import rpc_fixtures
    from test_service import Agent

from compute_agent.rpc import envelope

IMAGE_META = {'id': 'img', 'disk_format': 'qcow2'}


@pytest.fixture
def agents(tmp_path):
    made = []

    def make(**kwargs):
        path = tmp_path / ('agent%d' % len(made))
        path.mkdir()
        agent = Agent(str(path), **kwargs)
        made.append(agent)
        return agent
    yield make
    for agent in made:
        agent.stop(signal.SIGKILL)
        agent.delete_queues()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _instance(name=None):
    uuid = str(uuidlib.uuid4())
    return {'uuid': uuid, 'name': name or 'ob-' + uuid[:8], 'image_ref': 'img',
            'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 1}}


def _publish(agent, payloads):
    """Publish request payloads back to back, as a sender would."""
    with kombu.Connection(rpc_fixtures.kombu_url(
            rpc_fixtures.broker_url())) as conn:
        ch = conn.channel()
        for payload in payloads:
            msg = ch.prepare_message(
                envelope.dumps(payload), content_type='application/json',
                content_encoding='utf-8', properties={'delivery_mode': 2})
            ch.basic_publish(msg, exchange='openstack',
                             routing_key='%s.%s' % (agent.topic, agent.host))


def _metric(port, name):
    text = urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port,
                                  timeout=5).read().decode()
    return sum(float(line.rsplit(' ', 1)[1]) for line in text.splitlines()
               if line.startswith(name))


def _journal(agent, sql):
    db = sqlite3.connect(os.path.join(agent.options['DEFAULT']['state_path'],
                                      'journal.sqlite'))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


# ------------------------------------------------------------ the outbox

def test_reply_to_a_too_long_reply_queue_is_dropped_not_replayed(agents):
    """A state-changing call whose _reply_q (300 characters) no AMQP frame
    can carry: the agent answers nothing, serves on, and after a restart
    nothing of it comes back."""
    port = _free_port()
    agent = agents(extra={'metrics': {'enabled': 'true', 'port': str(port)}})
    agent.start()
    client = agent.client()
    watch = client.open_watch()
    inst = _instance()
    _publish(agent, [envelope.build_request(
        'spawn', {'instance': inst, 'image_meta': IMAGE_META},
        context={'request_id': 'req-poison'}, msg_id=uuidlib.uuid4().hex,
        reply_q='r' * 300, timeout=30)])
    events = []
    deadline = time.monotonic() + 30
    while 'spawn.end' not in events and time.monotonic() < deadline:
        ev = watch.get(timeout=1)
        if ev and ev[1].get('instance_uuid') == inst['uuid']:
            events.append(ev[1]['event'])
    assert events == ['spawn.start', 'spawn.end']
    # The agent serves the next request (a poison reply would block it).
    assert client.ping(timeout=10)['host'] == agent.host
    second = _instance()
    assert client.spawn(second, IMAGE_META, timeout=30)['vm_state'] == 'active'
    rpc_fixtures.wait_for(
        lambda: _metric(port, 'compute_agent_messages_dropped_total') == 1,
        message='the drop counted')
    assert _metric(port, 'compute_agent_messages_dropped_total'
                   '{kind="reply",reason="unencodable"}') == 1
    assert agent.log().count('Dropped unpublishable reply') == 1
    watch.stop()
    client.close()
    assert agent.stop() == 0
    # Recorded, and gone from the outbox.
    assert _journal(agent, 'SELECT count(*) FROM outbox') == [(0,)]
    assert _journal(agent, 'SELECT kind, length(routing_key), reason FROM'
                           ' dropped') == [('reply', 300, 'unencodable')]
    # A restart replays nothing: no request, no reply, no report.
    log_before = len(agent.log())
    agent.start()
    client = agent.client()
    watch = client.open_watch(inst['uuid'])
    assert client.ping(timeout=10)['host'] == agent.host
    assert client.get_info(inst['uuid'])['uuid'] == inst['uuid']
    # (test:///default forgets its guests with the process: the restarted
    # agent may report them stopped, but it runs no spawn again.)
    again = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        ev = watch.get(timeout=0.5)
        if ev:
            again.append(ev[1]['event'])
    assert not [e for e in again if e.startswith('spawn.')], again
    assert 'Dropped' not in agent.log()[log_before:]
    assert _metric(port, 'compute_agent_messages_dropped_total') == 0
    assert agent.queue_depth('%s.%s' % (agent.topic, agent.host)) == 0
    watch.stop()
    client.close()


# --------------------------------------------------------------- the names

def test_same_name_spawned_twice_at_once_makes_one_instance(agents):
    """20 pairs of spawns, each pair one name and two uuids, sent back to
    back as calls: 20 instances, each with its root disk, and 20
    InstanceInvalidState refusals naming the clash."""
    agent = agents(extra={'DEFAULT': {'max_concurrent_builds': '40'}})
    agent.start()
    pairs = [(_instance('race-%02d' % i), _instance('race-%02d' % i))
             for i in range(20)]
    with kombu.Connection(rpc_fixtures.kombu_url(
            rpc_fixtures.broker_url())) as conn:
        ch = conn.channel()
        ch.auto_decode = False
        reply_q = 'reply_' + uuidlib.uuid4().hex
        ch.queue_declare(reply_q, exclusive=True, auto_delete=True)
        sent = {}
        payloads = []
        for pair in pairs:
            for inst in pair:
                msg_id = uuidlib.uuid4().hex
                sent[msg_id] = inst
                payloads.append(envelope.build_request(
                    'spawn', {'instance': inst, 'image_meta': IMAGE_META},
                    msg_id=msg_id, reply_q=reply_q, timeout=None))
        _publish(agent, payloads)
        replies = {}
        deadline = time.monotonic() + 120
        while len(replies) < len(sent) and time.monotonic() < deadline:
            msg = ch.basic_get(reply_q, no_ack=True)
            if msg is None:
                time.sleep(0.05)
                continue
            reply = envelope.loads(msg.body)
            if reply.get('ending', True):
                replies[reply['_msg_id']] = reply
    assert len(replies) == 40
    won, refused = {}, {}
    for msg_id, reply in replies.items():
        inst = sent[msg_id]
        if reply['failure']:
            failure = envelope.deserialize_failure(reply['failure'])
            refused[inst['uuid']] = failure
        else:
            assert reply['result']['vm_state'] == 'active'
            won[inst['uuid']] = inst
    assert len(won) == 20 and len(refused) == 20
    for a, b in pairs:
        assert (a['uuid'] in won) != (b['uuid'] in won), a['name']
        loser, winner = (a, b) if a['uuid'] in refused else (b, a)
        failure = refused[loser['uuid']]
        assert failure['class'] == 'InstanceInvalidState'
        assert winner['uuid'] in failure['message']
        assert repr(winner['name']) in failure['message']
    client = agent.client()
    listed = client.list_instances()
    assert sorted(r['uuid'] for r in listed) == sorted(won)
    instances_path = os.path.join(agent.options['DEFAULT']['state_path'],
                                  'instances')
    for inst in won.values():
        disk = os.path.join(instances_path, inst['name'], 'disk')
        assert os.path.isfile(disk), disk
    for uuid in refused:
        with pytest.raises(Exception, match='InstanceNotFound'):
            client.get_info(uuid)
    for inst in won.values():
        client.destroy(inst, timeout=30)
    client.close()
