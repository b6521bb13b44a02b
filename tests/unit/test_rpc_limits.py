"""Message limits (rpc/limits.py) as the envelope applies them."""

import json

import prometheus_client as prom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute_agent import exception
from compute_agent import metrics
from compute_agent.rpc import envelope
from compute_agent.rpc import limits
from compute_agent.rpc import topology

LIMITS = limits.Limits(max_bytes=64 * 1024, max_depth=8, max_string=1000,
                       max_key=40, max_items=500)


def _request(payload, lim=LIMITS, ascii=True):
    """As the server decodes a request (``decode_request``: the walk only
    when the text is not plainly within the limits)."""
    body = json.dumps({'oslo.version': '2.0',
                       'oslo.message': json.dumps(payload,
                                                  ensure_ascii=ascii)})
    return envelope.decode_request(body, lim)


def _nested(depth):
    return '[' * depth + ']' * depth


def test_body_larger_than_max_bytes_is_not_decoded():
    body = b'{"method": "ping", "args": {"x": "' + b'a' * LIMITS.max_bytes \
        + b'"}}'
    with pytest.raises(envelope.DecodeError, match='max_message_bytes'):
        envelope.loads(body, LIMITS)
    # Without limits (the client reading replies) it is decoded.
    assert envelope.loads(body)['method'] == 'ping'


@pytest.mark.parametrize('outer', [True, False])
def test_json_too_deep_to_decode_is_a_decode_error(outer):
    deep = _nested(100000)
    body = deep if outer else json.dumps(
        {'oslo.version': '2.0', 'oslo.message': '{"method": "x", "a": %s}'
         % deep})
    with pytest.raises(envelope.DecodeError, match='too deep'):
        envelope.loads(body, limits.Limits())


@pytest.mark.parametrize('payload,field,words', [
    ({'method': 'ping', 'args': {'a': json.loads(_nested(9))}},
     'a[0][0][0][0][0][0]', 'max_json_depth'),
    ({'method': 'ping', 'args': {'a': 'x' * 1001}}, 'a', 'max_string_length'),
    ({'method': 'ping', 'args': {'k' * 41: 1}}, 'args', 'max_key_length'),
    ({'method': 'ping', 'args': {'l': list(range(600))}}, 'message',
     'max_message_items'),
    ({'method': 'm' * 41}, 'method', 'max_key_length'),
    ({'method': 'ping', '_unique_id': 'u' * 41}, '_unique_id',
     'max_key_length'),
    ({'method': 'ping', '_msg_id': 'u' * 41, '_reply_q': 'q'}, '_msg_id',
     'max_key_length'),
    ({'method': 'ping', '_context_request_id': 'r' * 41},
     '_context_request_id', 'max_key_length'),
    ({'method': 'ping', '_context_request_id': {'a': 1}},
     '_context_request_id', 'string or null'),
    ({'method': 'ping', 'version': {'a': 1}}, 'version', 'X.Y'),
    ({'method': 'ping', 'version': '1.' + '0' * 40}, 'version', 'X.Y'),
    ({'method': 'ping', 'args': {'a': [{'b': '\ud800'}]}}, 'a[0].b',
     'lone surrogate'),
    ({'method': 'ping\udfff'}, 'method', 'lone surrogate'),
    ({'method': 'ping', '_unique_id': '\ud800'}, '_unique_id',
     'lone surrogate'),
    ({'method': 'ping', '_context_user_id': 'a\ud800'}, '_context_user_id',
     'lone surrogate'),
    ({'method': 'ping', 'args': {'\ud800': 1}}, 'args', 'lone surrogate'),
])
@pytest.mark.parametrize('ascii', [True, False])
def test_past_a_limit_is_invalid_naming_field_and_limit(payload, field,
                                                         words, ascii):
    request = _request(payload, ascii=ascii)
    problem = request.problem
    assert isinstance(problem, exception.InvalidRequest)
    assert problem.field == field
    assert words in problem.reason
    # What the rest of the agent sees is safe to encode, log and report.
    for text in (request.method, str(request.unique_id), str(request.msg_id),
                 json.dumps(request.context), envelope.summary(request),
                 problem.message):
        text.encode('utf-8')
        assert len(text) < 600


def test_hostile_ids_are_dropped_and_method_escaped():
    request = _request({'method': 'get\ud800', '_unique_id': 'u\ud800',
                        '_msg_id': 'm', '_reply_q': 'q\ud800',
                        '_context_request_id': 'r\ud800',
                        '_context_user_id': 'ok'})
    assert request.method == 'get\\ud800'
    assert request.unique_id is None
    assert not request.is_call              # no reply queue to answer on
    assert request.context == {'user_id': 'ok'}
    request = _request({'method': 'ping', '_context_request_id': 'r' * 41})
    assert request.problem and request.context == {}


def test_a_clean_request_has_no_problem():
    payload = envelope.build_request(
        'spawn', {'instance': {'uuid': 'u', 'metadata': {'k': 'v' * 900}},
                  'network_info': [{'id': str(i)} for i in range(50)]},
        context={'request_id': 'r'}, msg_id='m', reply_q='reply_' + 'q' * 300)
    request = _request(payload)
    assert request.problem is None
    assert request.reply_q == 'reply_' + 'q' * 300   # its length: not ours


def test_a_paired_surrogate_is_fine():
    assert _request({'method': 'ping', 'args': {'a': '\U0001F600'}}
                    ).problem is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(
        st.text(max_size=60), inner, max_size=8),
    max_leaves=60)


@settings(max_examples=500)
@given(_JSON, st.booleans(), st.integers(min_value=0, max_value=3))
def test_within_never_passes_what_the_walk_refuses(value, ascii, quotes):
    """The text-only check is an over-estimate: whenever it says the text
    is within the limits, the walk finds nothing (tight limits, so that
    generated values cross them)."""
    lim = limits.Limits(max_depth=4, max_string=50, max_key=12,
                        max_items=40)
    text = json.dumps({'k"' * quotes: value}, ensure_ascii=ascii)
    if limits.within(text, lim):
        assert limits.problem(json.loads(text), lim) is None


def test_a_plain_request_is_within_the_limits():
    """What makes the walk rare: an ordinary request passes the text
    check (its long strings are values, within max_string_length)."""
    text = envelope.pack(envelope.build_request(
        'spawn', {'instance': {'uuid': 'u' * 36, 'name': 'vm-1'},
                  'network_info': [{'id': str(i)} for i in range(20)]},
        context={'request_id': 'req-' + 'r' * 36}))['oslo.message']
    assert limits.within(text, limits.Limits())
    assert not limits.within(text.replace('vm-1', 'vm-\\ud800'),
                             limits.Limits())


def test_walk_is_iterative_and_bounded():
    payload = {'method': 'ping', 'args': {'a': json.loads(_nested(900))}}
    lim = limits.Limits(max_depth=2000, max_items=10 ** 6)
    assert limits.problem(payload, lim) is None      # no RecursionError
    # A list past max_items is refused before its items are looked at.
    wide = {'method': 'ping', 'args': {'l': [0] * 10 ** 6}}
    assert limits.problem(wide, limits.Limits())[0] == 'message'


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_safe_text_is_bounded_and_encodable(text):
    shown = limits.safe_text(text)
    shown.encode('ascii')
    assert len(shown) <= 12 * limits.SHOWN + 3   # 12 for an astral char


@pytest.mark.parametrize('value,label', [
    ('spawn', 'spawn'), ('get_host_stats', 'get_host_stats'),
    ('m' * 65, 'other'), ('a\ud800', 'other'), ('a b', 'other'),
    ('', 'other'), (None, 'other')])
def test_metric_labels_are_bounded(value, label):
    assert metrics.bounded_label(value) == label


def test_hostile_method_names_cannot_grow_the_metrics():
    """Past _MAX_LABEL_SETS label sets a metric counts new names as
    "other", and the lookup cache stops growing at _MAX_CACHED."""
    counter = prom.Counter('t', 't', ['method'],
                           registry=prom.CollectorRegistry())
    for i in range(metrics._MAX_LABEL_SETS + 50):
        metrics.labelled(counter, 'm%d' % i).inc()
    metrics.labelled(counter, 'x' * 100).inc()
    names = {s.labels['method'] for s in counter.collect()[0].samples
             if s.name == 't_total'}
    assert len(names) == metrics._MAX_LABEL_SETS + 1   # and 'other'
    assert 'other' in names and 'x' * 100 not in names
    for i in range(2 * metrics._MAX_CACHED):
        metrics.labelled(counter, 'n%d' % i)
    assert len(metrics._CHILDREN) <= metrics._MAX_CACHED


def test_shared_methods():
    assert topology.SHARED_METHODS == {'ping', 'get_host_stats',
                                       'list_instances'}
