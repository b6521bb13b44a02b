"""A scheduler written with stock oslo.messaging drives the real agent.

docs: protocol: anything a stock ``RPCClient`` can do must work
against the agent unchanged, and a stock RPC server endpoint on the state
topic receives the agent's reports. The agent here is the real process on
real QEMU (agent_fixture.py), not a dispatcher double.
"""

import threading
import uuid as uuidlib

import oslo_messaging
import pytest

try:
    from tests.functional.agent_fixture import agent, test_guest  # noqa: F401
    from tests.functional.rpc_fixtures import oslo_transport  # noqa: F401
except ImportError:
    from agent_fixture import agent, test_guest  # noqa: F401
    from rpc_fixtures import oslo_transport  # noqa: F401


class SchedulerEndpoint:
    """What a scheduler author writes: a plain oslo endpoint."""

    def __init__(self):
        self.reports = []
        self.host_updates = []
        self.changed = threading.Condition()

    def instance_state_changed(self, ctxt, **kwargs):
        with self.changed:
            self.reports.append((ctxt, kwargs))
            self.changed.notify_all()

    def host_state_update(self, ctxt, **kwargs):
        with self.changed:
            self.host_updates.append(kwargs)
            self.changed.notify_all()

    def wait(self, predicate, timeout=60):
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), self.reports


@pytest.fixture
def scheduler(agent, oslo_transport):  # noqa: F811
    endpoint = SchedulerEndpoint()
    target = oslo_messaging.Target(topic=agent.state_topic, server='sched-1',
                                   exchange=agent.exchange)
    server = oslo_messaging.get_rpc_server(oslo_transport, target, [endpoint])
    server.start()
    yield endpoint
    server.stop()
    server.wait()


def _client(agent, transport):
    target = oslo_messaging.Target(topic=agent.topic, server=agent.host,
                                   exchange=agent.exchange)
    return oslo_messaging.get_rpc_client(transport, target, timeout=90)


def test_stock_client_spawns_and_scheduler_endpoint_gets_reports(
        agent, oslo_transport, scheduler):  # noqa: F811
    client = _client(agent, oslo_transport)
    ctxt = {'request_id': 'req-' + uuidlib.uuid4().hex, 'user_id': 'u1',
            'project_id': 'p1'}
    assert client.call(ctxt, 'ping')['host'] == agent.host
    inst = agent.make_instance('oslo')
    agent.instances[inst['uuid']] = inst           # cleaned up at teardown
    client.cast(ctxt, 'spawn', instance=inst,
                image_meta={'id': 'test-root', 'disk_format': 'qcow2'})
    scheduler.wait(lambda: any(r['instance_uuid'] == inst['uuid']
                               and r['event'] == 'spawn.end'
                               for _, r in scheduler.reports), timeout=90)
    mine = [(c, r) for c, r in scheduler.reports if r['instance_uuid'] == inst['uuid']]
    states = [(r['event'], r['vm_state'], r['task_state'], r['power_state'])
              for _, r in mine]
    assert states == [('spawn.start', 'building', 'spawning', 0),
                      ('spawn.end', 'active', None, 1)]
    for c, r in mine:
        assert r['request_id'] == ctxt['request_id'] and r['host'] == agent.host
        assert c.get('request_id') == ctxt['request_id'] and c.get('user_id') == 'u1'
    assert [r['sequence'] for _, r in mine] == sorted({r['sequence'] for _, r in mine})
    info = client.call(ctxt, 'get_info', instance_uuid=inst['uuid'])
    assert (info['vm_state'], info['power_state'], info['host']) == ('active', 1, agent.host)
    scheduler.wait(lambda: scheduler.host_updates, timeout=30)
    assert {'host', 'hypervisor_type', 'vcpus', 'memory_mb', 'local_gb', 'running_vms',
            'timestamp'} <= set(scheduler.host_updates[-1])
    client.call(ctxt, 'destroy', instance=inst)
    agent.instances.pop(inst['uuid'], None)


def test_failures_surface_as_remote_errors(agent, oslo_transport):  # noqa: F811
    client = _client(agent, oslo_transport)
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, 'get_info', instance_uuid=str(uuidlib.uuid4()))
    assert e.value.exc_type == 'InstanceNotFound'
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, 'spawn', instance={'uuid': str(uuidlib.uuid4())},
                    image_meta={'id': 'test-root'})
    assert e.value.exc_type == 'InvalidRequest' and 'instance.name' in e.value.value
    with pytest.raises(oslo_messaging.RemoteError) as e:
        _client(agent, oslo_transport).prepare(version='2.0').call({}, 'ping')
    assert e.value.exc_type == 'UnsupportedVersion'
    with pytest.raises(oslo_messaging.RemoteError) as e:
        _client(agent, oslo_transport).prepare(version='1.5').call({}, 'ping')
    assert e.value.exc_type == 'UnsupportedVersion'
    pinged = _client(agent, oslo_transport).prepare(version='1.0').call({}, 'ping')
    assert pinged['host'] == agent.host


def test_call_monitor_keeps_a_long_call_alive(agent, oslo_transport):  # noqa: F811
    """A call with oslo's call monitor (ending=false heartbeats) on a spawn."""
    client = _client(agent, oslo_transport).prepare(timeout=120, call_monitor_timeout=2)
    inst = agent.make_instance('mon')
    agent.instances[inst['uuid']] = inst
    record = client.call({}, 'spawn', instance=inst,
                         image_meta={'id': 'test-root', 'disk_format': 'qcow2'})
    assert record['vm_state'] == 'active'
    client.call({}, 'destroy', instance=inst)
    agent.instances.pop(inst['uuid'], None)
