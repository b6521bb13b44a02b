"""The dead-letter queue in quorum mode (docs: protocol-transport).

``<topic>.dead`` is a quorum queue when the agent's queues are, and a
dead-letter queue the agent cannot declare as it wants never stops it from
consuming: here one left over as a classic queue from before 1.1 (a 406 on
redeclaring it). The loss of the node holding it is test_rpc_cluster.py.
"""

import uuid

import amqp
import kombu
import pytest

try:
    from tests.functional.rpc_fixtures import (  # noqa: F401
        agents, broker_url, kombu_url, oslo_client, oslo_transport, wait_for)
    from tests.functional.rpc_helpers import publish_raw, queue_depth, \
        raw_request
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from rpc_fixtures import (  # noqa: F401
        agents, broker_url, kombu_url, oslo_client, oslo_transport, wait_for)
    from rpc_helpers import publish_raw, queue_depth, raw_request

pytestmark = [pytest.mark.rabbit]


def _declare(queue, arguments):
    """Declare on a channel of its own; the broker's error, or None."""
    with kombu.Connection(kombu_url(broker_url())) as c:
        try:
            c.channel().queue_declare(queue, durable=True, auto_delete=False,
                                      arguments=arguments)
        except amqp.exceptions.PreconditionFailed as e:
            return e
    return None


def test_dead_letter_queue_is_a_quorum_queue_in_quorum_mode(agents):
    agent = agents(rabbit_quorum_queue=True)
    dead = agent.names['dead_queue']
    assert _declare(dead, {'x-queue-type': 'quorum'}) is None
    assert _declare(dead, {}) is not None          # not a classic queue
    publish_raw(agent.conf, raw_request('no_such_method'))
    wait_for(lambda: queue_depth(agent.conf, dead) == 1, timeout=10,
             message='the cast dead-lettered')


def test_a_classic_dead_letter_queue_from_before_is_kept_and_used(
        agents, oslo_transport):  # noqa: F811
    suffix = uuid.uuid4().hex[:8]
    dead = 'compute-%s.dead' % suffix
    assert _declare(dead, {}) is None              # as 1.0 declared it
    agent = agents(suffix=suffix, rabbit_quorum_queue=True)
    assert agent.names['dead_queue'] == dead
    # Serving despite the 406 on <topic>.dead ...
    client = oslo_client(oslo_transport, agent.conf)
    assert client.call({}, 'echo', x=1) == {'x': 1}
    # ... and dead-lettering into the queue that is there.
    publish_raw(agent.conf, raw_request('no_such_method'))
    wait_for(lambda: queue_depth(agent.conf, dead) == 1, timeout=10,
             message='the cast dead-lettered')
    assert agent.server.healthy()


def test_unavailable_dead_letter_queue_never_stops_serving(
        agents, oslo_transport, monkeypatch):  # noqa: F811
    """While <topic>.dead cannot be declared (here: another connection
    holds it exclusively, 405 RESOURCE_LOCKED) the agent consumes and
    serves; it declares the queue once it can."""
    from compute_agent.rpc import server as server_mod
    monkeypatch.setattr(server_mod, '_DEAD_RETRY', 0.5)
    suffix = uuid.uuid4().hex[:8]
    dead = 'compute-%s.dead' % suffix
    holder = kombu.Connection(kombu_url(broker_url()))
    holder.channel().queue_declare(dead, exclusive=True)
    try:
        agent = agents(suffix=suffix, rabbit_quorum_queue=True)
        client = oslo_client(oslo_transport, agent.conf)
        assert client.call({}, 'echo', x=2) == {'x': 2}
        assert agent.server._dead_retry.is_alive()
    finally:
        holder.release()        # the exclusive queue goes with it
    wait_for(lambda: not agent.server._dead_retry.is_alive(), timeout=20,
             message='the dead-letter queue declared by the agent')
    assert _declare(dead, {}) is not None           # a quorum queue
    publish_raw(agent.conf, raw_request('no_such_method'))
    wait_for(lambda: queue_depth(agent.conf, dead) == 1, timeout=10,
             message='the cast dead-lettered')
