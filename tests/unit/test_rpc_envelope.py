"""The wire format against oslo.messaging's own functions."""

import json

import oslo_messaging
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oslo_messaging._drivers import common as oslo_common

from compute_agent import exception
from compute_agent.rpc import envelope

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)
payloads = st.dictionaries(st.text(), json_values, max_size=6)


@given(payloads)
def test_round_trip_and_oslo_compatibility(payload):
    body = envelope.dumps(payload)
    assert envelope.loads(body) == payload
    # oslo reads what we write, we read what oslo writes.
    assert oslo_common.deserialize_msg(json.loads(body)) == payload
    oslo_body = json.dumps(oslo_common.serialize_msg(payload))
    assert envelope.loads(oslo_body) == payload


def test_plain_object_is_an_old_style_message():
    assert envelope.loads(b'{"method": "ping", "args": {}}') == {
        'method': 'ping', 'args': {}}


@pytest.mark.parametrize('body', [
    b'nope', b'\xff', b'[]', b'"s"',
    json.dumps({'oslo.version': '1.0', 'oslo.message': '{}'}).encode(),
    json.dumps({'oslo.version': '3.0', 'oslo.message': '{}'}).encode(),
    json.dumps({'oslo.version': 'x', 'oslo.message': '{}'}).encode(),
    json.dumps({'oslo.version': '2.0', 'oslo.message': '[1]'}).encode(),
    json.dumps({'oslo.version': '2.0', 'oslo.message': 5}).encode(),
])
def test_undecodable(body):
    with pytest.raises(envelope.DecodeError):
        envelope.loads(body)


def test_minor_envelope_versions_are_accepted():
    body = json.dumps({'oslo.version': '2.3', 'oslo.message': '{"a": 1}'})
    assert envelope.loads(body) == {'a': 1}


def test_parse_request_as_oslo_client_sends_it():
    payload = envelope.build_request(
        'spawn', {'instance': {}}, context={'request_id': 'r', 'user_id': 'u'},
        msg_id='m', reply_q='reply_x', timeout=30)
    req = envelope.parse_request(payload)
    assert req.method == 'spawn' and req.version == '1.0'
    assert req.is_call and req.msg_id == 'm' and req.reply_q == 'reply_x'
    assert req.timeout == 30
    assert req.context == {'request_id': 'r', 'user_id': 'u'}
    assert req.unique_id == payload['_unique_id']
    cast = envelope.parse_request({'method': 'ping', '_timeout': 'x'})
    assert not cast.is_call and cast.timeout is None and cast.args == {}
    with pytest.raises(envelope.DecodeError):
        envelope.parse_request({'args': {}})


@pytest.mark.parametrize('version,ok', [
    ('1.0', True), ('1', False), ('1.1', True), ('1.2', False), ('2.0', False),
    ('0.9', False), ('abc', False), ('1.0.3', True), (None, False)])
def test_check_version(version, ok):
    if ok:
        envelope.check_version(version)
    else:
        with pytest.raises(exception.UnsupportedVersion):
            envelope.check_version(version)


def test_check_request_rejects_namespace_and_bad_args():
    req = envelope.parse_request({'method': 'x', 'namespace': 'n'})
    with pytest.raises(exception.InvalidRequest) as e:
        envelope.check_request(req)
    assert e.value.field == 'namespace'
    req = envelope.parse_request({'method': 'x', 'args': [1]})
    with pytest.raises(exception.InvalidRequest):
        envelope.check_request(req)


def _raise(exc):
    try:
        raise exc
    except Exception as e:  # noqa: BLE001
        return e


def test_failure_like_oslo_serialize_remote_exception():
    exc = _raise(exception.InstanceNotFound(uuid='u1'))
    ours = json.loads(envelope.serialize_failure(exc))
    theirs = json.loads(oslo_common.serialize_remote_exception(
        (type(exc), exc, exc.__traceback__)))
    assert set(ours) == set(theirs) == {'class', 'module', 'message', 'tb',
                                        'args', 'kwargs'}
    for key in ('class', 'message', 'args', 'kwargs', 'module'):
        assert ours[key] == theirs[key]
    assert ours['class'] == 'InstanceNotFound'
    assert ours['module'] == 'compute_agent.exception'
    # A stock oslo client turns it into RemoteError named after the class.
    remote = oslo_common.deserialize_remote_exception(
        envelope.serialize_failure(exc), [])
    assert isinstance(remote, oslo_messaging.RemoteError)
    assert remote.exc_type == 'InstanceNotFound'
    assert remote.value == 'Instance u1 could not be found'


def test_failure_of_unexpected_exception_keeps_its_class():
    exc = _raise(KeyError('k'))
    data = json.loads(envelope.serialize_failure(exc))
    assert (data['class'], data['module']) == ('KeyError', 'builtins')
    assert data['tb'] and data['tb'][-1].startswith('KeyError')


def test_reply_body_matches_build_reply():
    body = envelope.reply_body('m1', json.dumps({'a': [1]}), None)
    reply = envelope.loads(body)
    expected = envelope.build_reply('m1', {'a': [1]})
    assert set(reply) == set(expected)
    assert reply['result'] == {'a': [1]} and reply['ending'] is True
    beat = envelope.loads(envelope.reply_body('m1', ending=False))
    assert beat['ending'] is False and beat['result'] is None


def test_flatten_context_drops_auth_token():
    flat = envelope.flatten_context({'request_id': 'r', 'auth_token': 't'})
    assert flat == {'_context_request_id': 'r'}


def test_redact_removes_secrets_at_any_depth():
    payload = envelope.build_request(
        'spawn', {'admin_password': 'pw1', 'instance': {
            'nested': [{'rescue_password': 'pw2', 'auth_token': 'tk2'}]}},
        context={'auth_token': 'tk1', 'request_id': 'r'})
    for obj in (payload, envelope.pack(payload), envelope.dumps(payload)):
        text = json.dumps(envelope.redact(obj))
        for secret in ('pw1', 'pw2', 'tk1', 'tk2'):
            assert secret not in text
        assert 'spawn' in text and '"r"' in text
    assert 'pw' not in envelope.redact_body(b'{"admin_password": "pw"')
