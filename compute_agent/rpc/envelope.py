"""oslo.messaging wire format: envelope, requests, replies, failures.

Everything that must be byte-compatible with a stock oslo.messaging peer
(docs: protocol-envelope) lives here, so the server, the notifier and the client
share one definition. Kept free of AMQP so it can be tested in isolation.
"""

import copy
import functools
import json
import traceback
import uuid
from dataclasses import dataclass, field

from compute_agent import exception
from compute_agent.rpc import limits as limits_mod
from compute_agent.version import RPC_API_VERSION

ENVELOPE_VERSION = '2.0'
VERSION_KEY = 'oslo.version'
MESSAGE_KEY = 'oslo.message'
CONTEXT_PREFIX = '_context_'
# Context keys never copied onto messages the agent sends.
_UNFORWARDED_CONTEXT = frozenset({'auth_token'})
_AGENT_ERROR_MODULE = exception.__name__


class DecodeError(ValueError):
    """The body cannot be understood at all: it is dead-lettered, not answered."""


def new_id():
    return uuid.uuid4().hex


# ---------------------------------------------------------------- envelope

def pack(payload):
    """Wrap an inner payload in the 2.0 envelope (JSON inside a JSON string)."""
    return {VERSION_KEY: ENVELOPE_VERSION, MESSAGE_KEY: json.dumps(payload)}


def dumps(payload):
    """The AMQP body bytes of an enveloped payload."""
    return json.dumps(pack(payload)).encode('utf-8')


def loads(body, limits=None):
    """Return the inner payload of a message body; raise DecodeError.

    A plain JSON object without the two envelope keys is an old-style (1.0)
    message and is its own payload. With ``limits`` (a ``limits.Limits``),
    a body too large or nested too deep to decode is a DecodeError too.
    """
    return _loads(body, limits)[0]


def decode_request(body, limits):
    """``parse_request(loads(body, limits), limits)``; a payload whose text
    is too small and plain to break a limit (``limits.within``) is not
    walked value by value."""
    payload, text = _loads(body, limits)
    return parse_request(payload, limits,
                         walk=not limits_mod.within(text, limits))


def _loads(body, limits):
    """(inner payload, its JSON text)."""
    try:
        limits_mod.check_size(body, limits)
        if isinstance(body, (bytes, bytearray, memoryview)):
            body = bytes(body).decode('utf-8')
        outer = limits_mod.parse_json(body, limits)
    except limits_mod.TooLarge as e:
        raise DecodeError(str(e)) from None
    except (UnicodeDecodeError, ValueError, TypeError) as e:
        raise DecodeError('body is not UTF-8 JSON: %s' % e) from None
    if not isinstance(outer, dict):
        raise DecodeError('body is not a JSON object')
    if VERSION_KEY not in outer or MESSAGE_KEY not in outer:
        return outer, body
    version = outer[VERSION_KEY]
    if _major(version) != _major(ENVELOPE_VERSION):
        raise DecodeError('unsupported envelope version %s'
                          % limits_mod.safe_text(repr(version)))
    inner = outer[MESSAGE_KEY]
    if not isinstance(inner, str):
        raise DecodeError('oslo.message is not a string')
    try:
        payload = limits_mod.parse_json(inner, limits)
    except limits_mod.TooLarge as e:
        raise DecodeError(str(e)) from None
    except ValueError as e:
        raise DecodeError('oslo.message is not JSON: %s' % e) from None
    if not isinstance(payload, dict):
        raise DecodeError('oslo.message is not a JSON object')
    return payload, inner


def _major(version):
    try:
        return int(str(version).split('.')[0])
    except ValueError:
        return None


# ----------------------------------------------------------------- context

def flatten_context(context, drop=_UNFORWARDED_CONTEXT):
    """``{'request_id': x}`` -> ``{'_context_request_id': x}`` (oslo's pack)."""
    return {CONTEXT_PREFIX + k: v for k, v in (context or {}).items()
            if k not in drop}


def unflatten_context(payload):
    return {k[len(CONTEXT_PREFIX):]: v for k, v in payload.items()
            if k.startswith(CONTEXT_PREFIX)}


# ---------------------------------------------------------------- requests

@dataclass
class Request:
    """A decoded request; ``msg_id`` is set for calls only.

    ``problem`` is the InvalidRequest of a message past a limit (set by
    ``parse_request``); its fields are then already made safe to log,
    record and report.
    """

    method: str
    args: dict
    version: str = '1.0'
    namespace: object = None
    unique_id: str | None = None
    msg_id: str | None = None
    reply_q: str | None = None
    timeout: float | None = None
    context: dict = field(default_factory=dict)
    problem: Exception | None = None

    @property
    def is_call(self):
        return bool(self.msg_id and self.reply_q)


def parse_request(payload, limits=None, walk=True):
    """Inner payload -> Request. DecodeError when there is no method at all.

    A present but malformed field (args not an object) decodes fine and is
    left for validation, so a call still gets a failure reply. With
    ``limits``, a payload past one gets ``problem`` set, and whatever the
    rest of the agent would choke on is replaced: a hostile method name by
    a short escaped rendering, an id that cannot be encoded by None (no
    dedup; no reply when it is the reply queue), such context entries left
    out. ``walk=False``: the payload is known to be within the value
    limits (``limits.within``); only its names are checked.
    """
    method = payload.get('method')
    if not isinstance(method, str) or not method:
        raise DecodeError('no method')
    timeout = payload.get('_timeout')
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        timeout = None
    version = payload.get('version')
    request = Request(
        method=method,
        args=payload.get('args', {}),
        version='1.0' if version is None else version,
        namespace=payload.get('namespace'),
        unique_id=_str_or_none(payload.get('_unique_id')),
        msg_id=_str_or_none(payload.get('_msg_id')),
        reply_q=_str_or_none(payload.get('_reply_q')),
        timeout=timeout,
        context=unflatten_context(payload),
    )
    if limits is not None:
        found = _long_name(payload, limits) or (
            limits_mod.problem(payload, limits) if walk else None)
        if found is not None:
            request.problem = exception.InvalidRequest(*found)
            _make_safe(request, limits)
    return request


# Names and ids are held to max_key_length, not max_string_length: the
# request id, say, goes into every log line and report of the request.
_NAMES = ('method', '_unique_id', '_msg_id', CONTEXT_PREFIX + 'request_id',
          CONTEXT_PREFIX + 'global_request_id')


def _long_name(payload, limits):
    for key in _NAMES:
        value = payload.get(key)
        if isinstance(value, str) and len(value) > limits.max_key:
            return key, ('is longer than %d characters ([rpc] max_key_length)'
                         % limits.max_key)
        if key.startswith(CONTEXT_PREFIX) and not isinstance(
                value, (str, type(None))):
            return key, 'must be a string or null'

    version = payload.get('version')
    if isinstance(version, (dict, list)) or (
            isinstance(version, str) and len(version) > limits.max_key):
        return 'version', 'must be a version string "X.Y"'
    return None


def _str_or_none(value):
    return value if isinstance(value, str) and value else None


def _make_safe(request, limits):
    if not limits_mod.clean(request.method, limits.max_key):
        request.method = limits_mod.safe_text(request.method)
    for name in ('unique_id', 'msg_id'):
        if not limits_mod.clean(getattr(request, name), limits.max_key):
            setattr(request, name, None)
    # Its length is not ours to judge (the publisher's); its text is.
    if not limits_mod.clean(request.reply_q, limits.max_string):
        request.reply_q = None
    if not isinstance(request.version, str) or not limits_mod.clean(
            request.version, limits.max_key):
        request.version = '?'
    request.context = {
        k: v for k, v in request.context.items()
        if limits_mod.problem({k: v}, limits) is None and not (
            CONTEXT_PREFIX + k in _NAMES and not limits_mod.clean(
                v, limits.max_key) and v is not None)}


def check_request(request, served=RPC_API_VERSION):
    """Envelope-level validity: args object, namespace, API version."""
    if not isinstance(request.args, dict):
        raise exception.InvalidRequest('args', 'must be an object')
    if request.namespace is not None:
        raise exception.InvalidRequest('namespace', 'must be absent or null')
    check_version(request.version, served)


def check_version(requested, served=RPC_API_VERSION):
    """Served when the major matches and the minor is not above ours."""
    if not _serves(str(requested), served):
        raise exception.UnsupportedVersion(version=requested, served=served)


@functools.lru_cache(maxsize=64)   # every request asks, with a few versions
def _serves(requested, served):
    try:
        req = [int(p) for p in requested.split('.')[:2]]
        have = [int(p) for p in served.split('.')[:2]]
    except ValueError:
        return False
    return len(req) == 2 and req[0] == have[0] and req[1] <= have[1]


def build_request(method, args=None, context=None, version=None,
                  msg_id=None, reply_q=None, timeout=None, unique_id=None):
    """Inner payload of a cast (no msg_id) or a call, as oslo's client sends."""
    payload = {'method': method, 'args': dict(args or {})}
    if version is not None:
        payload['version'] = version
    if msg_id is not None:
        payload.update(_msg_id=msg_id, _reply_q=reply_q, _timeout=timeout)
    payload['_unique_id'] = unique_id or new_id()
    payload.update(flatten_context(context, drop=()))
    return payload


# ----------------------------------------------------------------- replies

def build_reply(msg_id, result=None, failure=None, ending=True):
    return {'result': result, 'failure': failure, 'ending': ending,
            '_msg_id': msg_id, '_unique_id': new_id()}


def reply_body(msg_id, result_json='null', failure=None, ending=True):
    """Body bytes of a reply whose result is already JSON-encoded.

    Same bytes as ``dumps(build_reply(...))`` without decoding and encoding
    the result again on the consume thread.
    """
    inner = '{"result": %s, "failure": %s, "ending": %s, "_msg_id": %s, ' \
            '"_unique_id": "%s"}' % (result_json, json.dumps(failure),
                                     'true' if ending else 'false',
                                     json.dumps(msg_id), new_id())
    return json.dumps({VERSION_KEY: ENVELOPE_VERSION,
                       MESSAGE_KEY: inner}).encode('utf-8')


def serialize_failure(exc, tb_lines=None):
    """Exception -> the JSON string oslo's serialize_remote_exception makes.

    ``class`` is the bare class name; the module of the agent's own errors is
    ``compute_agent.exception``; anything else keeps its real module.
    """
    if tb_lines is None:
        tb_lines = traceback.format_exception(type(exc), exc,
                                              exc.__traceback__)
    cls = type(exc)
    module = cls.__module__
    if isinstance(exc, exception.AgentError):
        module = _AGENT_ERROR_MODULE
    data = {
        'class': cls.__name__,
        'module': module,
        'message': str(exc),
        'tb': list(tb_lines),
        'args': list(exc.args),
        'kwargs': dict(getattr(exc, 'kwargs', None) or {}),
    }
    return json.dumps(data, default=str)


def deserialize_failure(failure):
    """The failure JSON string -> dict (tolerates an already decoded dict)."""
    if isinstance(failure, dict):
        return failure
    try:
        data = json.loads(failure)
    except (TypeError, ValueError):
        return {'class': 'RemoteError', 'message': str(failure), 'tb': []}
    return data if isinstance(data, dict) else {
        'class': 'RemoteError', 'message': str(data), 'tb': []}


# ----------------------------------------------------------------- logging

REDACTED = '***'


def _secret_key(key):
    k = str(key).lower()
    return 'password' in k or k == 'auth_token' or k.endswith('_auth_token')


def redact(obj):
    """Copy of a message fit for a log line: secrets are removed.

    Drops ``_context_auth_token``, ``auth_token`` and any key containing
    ``password`` at any depth; an enveloped ``oslo.message`` string is
    decoded, redacted and kept decoded.
    """
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if _secret_key(k):
                continue
            if k == MESSAGE_KEY and isinstance(v, str):
                try:
                    v = json.loads(v)
                except ValueError:
                    v = REDACTED
            out[k] = redact(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return redact_body(obj)
    return copy.copy(obj)


def redact_body(body):
    """A raw message body fit for a log line: decoded and redacted, or only
    its size when it cannot be decoded (it could hold anything)."""
    try:
        return redact(loads(body))
    except DecodeError:
        return '<%d undecodable bytes>' % len(body)


def summary(request):
    """Short, secret-free description of a request for log lines; bounded
    and printable whatever the request holds."""
    if isinstance(request.args, dict):
        names = sorted(limits_mod.safe_text(str(k)) for k in
                       list(request.args)[:_SUMMARY_ARGS])
        if len(request.args) > _SUMMARY_ARGS:
            names.append('...')
        args = ', '.join(names)
    else:
        args = '?'
    return '%s(%s) unique_id=%s%s' % (
        limits_mod.safe_text(request.method), args,
        limits_mod.safe_text(str(request.unique_id)),
        ' msg_id=%s' % limits_mod.safe_text(request.msg_id)
        if request.msg_id else '')


_SUMMARY_ARGS = 16
