"""Hostile messages against the REAL agent over the REAL broker.

Every message must get a verdict (a reply, an ack or a dead-letter) in
bounded time and memory (the protocol docs 1.1 section 5, issue 12): a hypothesis
fuzz over the envelope and the arguments, and one regression test per class
of message that used to break the agent (deep JSON, lone surrogates, long
names, a 12 MB spawn, many 1 MB method names) plus the refusal of instance
methods on the shared queue and the fanout. After each: the agent answers
``ping``, its RSS (/proc/<pid>/status) stays bounded, and (for the
regression classes) a following spawn of the test guest works.

Bodies are published raw with kombu, as a hostile sender would.
"""

import json
import time
import uuid as uuidlib

import kombu
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compute_agent.rpc import envelope

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        agent, kombu_url, test_guest, wait_until)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_fixture import (  # noqa: F401
        agent, kombu_url, test_guest, wait_until)

pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(600)]

MB = 1024 * 1024
VERDICT_TIMEOUT = 30
SURROGATE = '\ud800'
METHODS = ['ping', 'spawn', 'reboot', 'destroy', 'get_info', 'pause',
           'list_instances', 'get_host_stats', 'rescue', 'power_off']


# -- helpers ---------------------------------------------------------------------

class Wire:
    """Raw access to the agent's broker objects: publish bodies, read
    replies on an exclusive queue, count the dead-letter queue."""

    def __init__(self, agent):
        self.agent = agent
        self.conn = kombu.Connection(kombu_url(agent.url))
        self.ch = self.conn.channel()
        self.ch.auto_decode = False
        self.reply_q = 'reply_hostile_' + uuidlib.uuid4().hex
        self.ch.queue_declare(self.reply_q, exclusive=True, auto_delete=True)
        self.dead_q = '%s.dead' % agent.topic

    def publish(self, body, routing_key=None, exchange=None):
        if isinstance(body, str):
            body = body.encode('utf-8')
        msg = self.ch.prepare_message(
            body, content_type='application/json', content_encoding='utf-8',
            properties={'delivery_mode': 2})
        self.ch.basic_publish(
            msg, exchange=self.agent.exchange if exchange is None else exchange,
            routing_key=routing_key or '%s.%s' % (self.agent.topic,
                                                  self.agent.host))

    def body(self, method, args=None, call=False, **fields):
        """An enveloped request; ``fields`` override envelope keys. Encoded
        with ensure_ascii, so lone surrogates travel as \\ud800 escapes (the
        way a hostile sender gets them past UTF-8)."""
        payload = {'method': method, 'args': args if args is not None else {},
                   '_unique_id': uuidlib.uuid4().hex,
                   '_context_request_id': 'req-hostile'}
        if call:
            payload.update(_msg_id=uuidlib.uuid4().hex, _reply_q=self.reply_q,
                           _timeout=None)
        payload.update(fields)
        return json.dumps({'oslo.version': '2.0',
                           'oslo.message': json.dumps(payload)})

    def reply(self, timeout=VERDICT_TIMEOUT):
        """The next final reply on our queue (inner payload)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.ch.basic_get(self.reply_q, no_ack=True)
            if msg is None:
                time.sleep(0.02)
                continue
            reply = envelope.loads(msg.body)
            if reply.get('ending', True):
                return reply
        raise AssertionError('no reply within %ss' % timeout)

    def failure(self, timeout=VERDICT_TIMEOUT):
        reply = self.reply(timeout)
        assert reply['failure'], reply
        return envelope.deserialize_failure(reply['failure'])

    def dead_count(self):
        return self.ch.queue_declare(self.dead_q, passive=True).message_count

    def wait_dead(self, count, timeout=VERDICT_TIMEOUT):
        wait_until(lambda: self.dead_count() >= count, timeout,
                   '%d messages in %s' % (count, self.dead_q))

    def purge_replies(self):
        self.ch.queue_purge(self.reply_q)

    def close(self):
        self.conn.release()


def rss_kb(agent):
    with open('/proc/%d/status' % agent.proc.pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS')


def assert_pings(agent):
    pong = agent.client.ping(timeout=20)
    assert pong['host'] == agent.host
    assert agent.alive()


def assert_spawn_works(agent):
    """A cheap spawn of the test guest, then its destroy."""
    inst, record = agent.spawn(label='after')
    assert record['vm_state'] == 'active', record
    agent.destroy(inst)
    agent.instances.pop(inst['uuid'], None)


@pytest.fixture(scope='module')
def wire(agent):
    w = Wire(agent)
    assert_pings(agent)
    w.rss_start = rss_kb(agent)
    yield w
    w.close()


def assert_bounded(agent, wire, margin_mb=80):
    """RSS below twice the start plus a fixed margin."""
    now = rss_kb(agent)
    assert now < 2 * wire.rss_start + margin_mb * 1024, (wire.rss_start, now)


def nested(depth, leaf=0):
    return '[' * depth + json.dumps(leaf) + ']' * depth


# -- regression tests, one per class ------------------------------------------------

def test_json_nested_10000_deep(agent, wire):
    """Too deep to decode: dead-lettered unread. Deep but decodable: a call
    gets InvalidRequest naming max_json_depth."""
    dead = wire.dead_count()
    inner = ('{"method": "ping", "args": {"x": %s}, "_unique_id": "%s"}'
             % (nested(10000), uuidlib.uuid4().hex))
    wire.publish(json.dumps({'oslo.version': '2.0', 'oslo.message': inner}))
    wire.publish(nested(10000))                       # the body itself
    wire.wait_dead(dead + 2)
    wire.publish(wire.body('get_info', {'instance_uuid': json.loads(
        nested(200, str(uuidlib.uuid4())))}, call=True))
    failure = wire.failure()
    assert failure['class'] == 'InvalidRequest', failure
    assert 'max_json_depth' in failure['message']
    assert_pings(agent)
    assert_spawn_works(agent)
    assert_bounded(agent, wire)


@pytest.mark.parametrize('where', ['_unique_id', 'method', 'arg_value',
                                   'arg_name', 'context'])
def test_lone_surrogates(agent, wire, where):
    """Text that cannot be encoded is InvalidRequest naming the field."""
    uuid = str(uuidlib.uuid4())
    args = {'instance_uuid': uuid}
    fields = {}
    method = 'get_info'
    if where == '_unique_id':
        fields['_unique_id'] = 'u' + SURROGATE
    elif where == 'method':
        method = 'get_info' + SURROGATE
    elif where == 'arg_value':
        args['instance_uuid'] = uuid + SURROGATE
    elif where == 'arg_name':
        args['x' + SURROGATE] = 1
    else:
        fields['_context_request_id'] = 'req-' + SURROGATE
    wire.publish(wire.body(method, args, call=True, **fields))
    failure = wire.failure()
    assert failure['class'] == 'InvalidRequest', failure
    assert 'lone surrogate' in failure['message']
    json.dumps(failure).encode('utf-8')               # it is encodable
    if where == 'method':
        assert failure['message'].startswith('Invalid request: method')
    assert_pings(agent)
    assert_spawn_works(agent)


def test_lone_surrogate_in_reply_queue_and_cast(agent, wire):
    """No reply is possible (the reply queue cannot be named): dead-lettered,
    like a cast whose method holds a surrogate."""
    dead = wire.dead_count()
    wire.publish(wire.body('get_info', {}, call=True,
                           _reply_q='reply_' + SURROGATE))
    wire.publish(wire.body('reboot' + SURROGATE,
                           {'instance': {'uuid': str(uuidlib.uuid4())}}))
    wire.wait_dead(dead + 2)
    assert_pings(agent)
    assert_spawn_works(agent)
    assert_bounded(agent, wire)


def test_very_long_method_and_argument_names(agent, wire):
    dead = wire.dead_count()
    long_name = 'a' * 32768
    started = time.monotonic()
    for _ in range(5):      # casts: dead-lettered
        wire.publish(wire.body(long_name, {}))
    wire.wait_dead(dead + 5)
    wire.publish(wire.body(long_name, {}, call=True))
    failure = wire.failure()
    assert failure['class'] == 'InvalidRequest'
    assert 'max_key_length' in failure['message'], failure['message']
    assert len(failure['message']) < 1000
    wire.publish(wire.body('ping', {long_name: 1}, call=True))
    failure = wire.failure()
    assert 'max_key_length' in failure['message'], failure['message']
    print('7 messages with 32k-letter names settled in %.2fs'
          % (time.monotonic() - started))
    assert_pings(agent)
    assert_spawn_works(agent)
    assert_bounded(agent, wire)


def _bad_vifs(n):
    return [{'id': 'port-%d' % i, 'address': 'not-a-mac', 'type': 'bridge'}
            for i in range(n)]


def test_huge_spawn_with_200000_invalid_vifs(agent, wire):
    """12 MB: past max_message_bytes, dead-lettered unread. A spawn just
    under the size limit with too many values is InvalidRequest; one with
    65 VIFs fails validation's maxItems. RSS stays bounded."""
    dead = wire.dead_count()
    inst = agent.make_instance('huge')
    args = {'instance': inst, 'image_meta': {'id': 'test-root'},
            'network_info': _bad_vifs(200000)}
    body = wire.body('spawn', args, call=True)
    assert len(body) > 12 * MB
    wire.publish(body)
    wire.wait_dead(dead + 1)
    args['network_info'] = _bad_vifs(40000)
    body = wire.body('spawn', args, call=True)
    assert len(body) < 4 * MB
    wire.publish(body)
    failure = wire.failure()
    assert 'max_message_items' in failure['message'], failure
    args['network_info'] = [{'id': 'port-%d' % i, 'type': 'bridge',
                             'address': 'fa:16:3e:00:00:%02x' % i}
                            for i in range(65)]
    wire.publish(wire.body('spawn', args, call=True))
    failure = wire.failure()
    assert failure['message'] == ('Invalid request: network_info: must have '
                                  'at most 64 items'), failure
    with pytest.raises(Exception, match='InstanceNotFound'):
        agent.get_info(inst['uuid'])
    assert_pings(agent)
    assert_bounded(agent, wire)
    assert_spawn_works(agent)


def test_sixty_distinct_1mb_method_names(agent, wire):
    """Each is refused and nothing of them is kept (metric labels are
    bounded): three rounds of 60 (180 MB of names, all of which a leak
    would keep) leave RSS within an allocator's slack of where it was."""
    start = rss_kb(agent)
    grown = []
    for round_ in range(3):
        dead = wire.dead_count()
        for i in range(60):
            wire.publish(wire.body('%d-%02d' % (round_, i) + 'm' * MB, {}))
        wire.wait_dead(dead + 60, timeout=120)
        assert_pings(agent)
        grown.append((rss_kb(agent) - start) / 1024)
    print('RSS above the start after each round of 60 x 1 MB method '
          'names: %s MB' % ', '.join('%.1f' % g for g in grown))
    assert grown[-1] < 64, grown
    assert_spawn_works(agent)
    assert_bounded(agent, wire)


# -- the shared queue and the fanout (docs: protocol-delivery) -------------------------

def test_instance_methods_refused_on_shared_queue_and_fanout(agent, wire):
    uuid = str(uuidlib.uuid4())
    # A call through <topic>: InvalidRequest naming the rule.
    wire.publish(wire.body('reboot', {'instance': {'uuid': uuid}}, call=True),
                 routing_key=agent.topic)
    failure = wire.failure()
    assert failure['class'] == 'InvalidRequest', failure
    assert 'not served from the shared queue' in failure['message']
    # A cast through the fanout: dead-lettered, and a pause.error report.
    dead = wire.dead_count()
    mark = agent.reports.mark()
    wire.publish(wire.body('pause', {'instance': {'uuid': uuid}}),
                 exchange='%s_fanout' % agent.topic, routing_key=agent.topic)
    wire.wait_dead(dead + 1)
    report = agent.reports.wait(
        lambda r: r.get('instance_uuid') == uuid
        and r.get('event') == 'pause.error', 30, 'pause.error', since=mark)
    assert report['error']['class'] == 'InvalidRequest'
    # What any host may answer still is.
    for method in ('ping', 'list_instances', 'get_host_stats'):
        wire.publish(wire.body(method, {}, call=True), routing_key=agent.topic)
        reply = wire.reply()
        assert reply['failure'] is None, reply
    wire.publish(wire.body('ping', {}, call=True),
                 exchange='%s_fanout' % agent.topic, routing_key=agent.topic)
    assert wire.reply()['result']['host'] == agent.host
    assert_pings(agent)


# -- the fuzz test -------------------------------------------------------------------

surrogates = st.sampled_from([SURROGATE, '\udfff', 'a\udc80b'])
texts = st.one_of(st.text(max_size=20), surrogates,
                  st.integers(1, 40000).map(lambda n: 'k' * n))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
    | st.floats(allow_nan=True) | texts,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30)
methods = st.one_of(st.sampled_from(METHODS), texts)
envelope_fields = st.fixed_dictionaries({}, optional={
    '_unique_id': json_values, '_msg_id': json_values, '_timeout': json_values,
    'version': st.one_of(st.sampled_from(['1.0', '1.1', '2.0', '1.99']),
                         json_values),
    'namespace': json_values, '_context_request_id': json_values,
    '_context_auth_token': texts})
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 20000).map(nested),
    st.just(b'{"oslo.version": "2.0", "oslo.message": "{\\"method\\": 1}"}'),
    json_values.map(json.dumps))
routes = st.sampled_from(['host', 'host', 'topic', 'fanout'])


@st.composite
def messages(draw):
    if draw(st.integers(0, 4)) == 0:
        return draw(raw_bodies), draw(routes), False
    uuid = str(uuidlib.uuid4())
    args = draw(st.one_of(
        json_values,
        st.dictionaries(texts, json_values, max_size=4),
        st.fixed_dictionaries({'instance': st.fixed_dictionaries(
            {'uuid': st.just(uuid)}, optional={'name': texts,
                                               'flavor': json_values})},
            optional={'instance_uuid': st.one_of(st.just(uuid), texts),
                      'network_info': st.lists(json_values, max_size=70),
                      'reboot_type': texts})))
    payload = {'method': draw(methods), 'args': args,
               '_unique_id': uuidlib.uuid4().hex}
    payload.update(draw(envelope_fields))
    call = draw(st.booleans())
    if call:
        payload.setdefault('_msg_id', uuidlib.uuid4().hex)
        payload['_reply_q'] = draw(st.one_of(st.just(None), surrogates)) \
            or '__WIRE_REPLY_Q__'
    text = json.dumps(payload)
    if draw(st.booleans()):       # 2.0 envelope, else an old-style body
        text = json.dumps({'oslo.version': '2.0', 'oslo.message': text})
    return text, draw(routes), call


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(message=messages())
def test_fuzz_every_message_gets_a_verdict(agent, wire, message):
    """After every message, whatever it holds, the agent answers ping and
    its RSS stays below twice the start plus a fixed margin."""
    body, route, _call = message
    if isinstance(body, str):
        body = body.replace('__WIRE_REPLY_Q__', wire.reply_q).encode('utf-8')
    exchange, key = None, '%s.%s' % (agent.topic, agent.host)
    if route == 'topic':
        key = agent.topic
    elif route == 'fanout':
        exchange, key = '%s_fanout' % agent.topic, agent.topic
    wire.publish(body, routing_key=key, exchange=exchange)
    assert_pings(agent)
    assert_bounded(agent, wire)


def test_after_the_fuzz_a_spawn_works(agent, wire):
    wire.purge_replies()
    assert_spawn_works(agent)
    assert_bounded(agent, wire)
