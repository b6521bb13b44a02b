"""Logging through oslo.log: format, request context, masking, truncation.

The handlers are the ones ``compute_agent.log.setup`` builds from oslo.log's
options (text and ``use_json``), writing to a StringIO instead of stdout.
"""

import io
import json
import logging
import os
import sys
import uuid

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import log

LOG = logging.getLogger('compute_agent.test')
UUID = str(uuid.UUID(int=0x1234))
SECRET_KEYS = ('admin_password', 'rescue_password', 'auth_password',
               'password', 'secret', '_context_auth_token')


@pytest.fixture
def logging_to():
    """``make(json_lines, **overrides)`` -> StringIO receiving the log."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, sys.excepthook

    def make(json_lines=False, **overrides):
        conf = agent_conf.register_all(cfg.ConfigOpts())
        conf(args=[], default_config_files=[])
        conf.set_override('use_json', json_lines)
        for key, value in overrides.items():
            conf.set_override(key, value)
        log.setup(conf)
        stream = io.StringIO()
        for handler in root.handlers:
            handler.setStream(stream)
        return stream

    yield make
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.handlers[:], root.level = saved[0], saved[1]
    sys.excepthook = saved[2]


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _emit(form, key, secret):
    """Log ``{key: secret}`` in one of the shapes secrets reach the log."""
    body = {key: secret, 'instance_uuid': UUID}
    if form == 'dict':
        LOG.info('request %s', body)
    elif form == 'json':
        LOG.info('body %s', json.dumps(body))
    elif form == 'json-unicode':
        LOG.warning('body %s', json.dumps(body, ensure_ascii=False))
    elif form == 'kwargs':
        LOG.info('spawn(%s)', ', '.join('%s=%r' % kv for kv in body.items()))
    elif form == 'nested-json':
        LOG.info('%s', json.dumps({'oslo.message': json.dumps({'args': body})}))
    elif form == 'exception':
        try:
            raise ValueError(body)
        except ValueError:
            LOG.exception('request failed')
    else:
        raise AssertionError(form)


FORMS = ('dict', 'json', 'json-unicode', 'kwargs', 'nested-json', 'exception')
PASSWORDS = st.text(
    alphabet=st.one_of(
        st.sampled_from(' \'",\\:={}[]'),
        st.characters(blacklist_categories=('Cs',)),
    ),
    min_size=4, max_size=40).filter(lambda s: s.strip())


@pytest.mark.parametrize('json_lines', [False, True], ids=['text', 'json'])
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=PASSWORDS, key=st.sampled_from(SECRET_KEYS),
       form=st.sampled_from(FORMS))
def test_no_password_ever_appears(logging_to, json_lines, secret, key, form):
    stream = logging_to(json_lines)
    _emit(form, key, 'PLACEHOLDER')
    baseline = stream.getvalue()
    assume(secret not in baseline)      # e.g. a "password" of 'INFO'
    stream.seek(0)
    stream.truncate()
    _emit(form, key, secret)
    out = stream.getvalue()
    assert secret not in out
    assert '***' in out
    if json_lines:
        for line in out.splitlines():
            for text in _strings(json.loads(line)):
                assert secret not in text


def test_the_reported_leak_is_closed(logging_to):
    stream = logging_to()
    LOG.info('%s', '{"admin_password": "correct horse battery"}')
    out = stream.getvalue()
    assert 'correct horse battery' not in out and 'horse' not in out
    assert '{"admin_password": "***"}' in out


@pytest.mark.parametrize('text, masked', [
    ("{'admin_password': None, 'name': 'vm'}",
     "{'admin_password': None, 'name': 'vm'}"),
    ('rabbit://nova:s3cret@mq1:5672/', 'rabbit://nova:***@mq1:5672/'),
    ('password: top secret\nnext line', 'password: ***\nnext line'),
    ('{"password": "cut off', '{"password": "***'),
])
def test_mask_shapes(text, masked):
    assert log.mask(text) == masked


def test_text_lines_carry_pid_request_and_instance(logging_to):
    stream = logging_to()
    with log.request_context('req-abc', UUID):
        LOG.info('inside')
    LOG.info('outside')
    inside, outside = stream.getvalue().splitlines()
    assert ' %d INFO compute_agent.test ' % os.getpid() in inside
    assert 'req-abc' in inside and '[instance: %s] inside' % UUID in inside
    assert 'req-abc' not in outside and UUID not in outside


def test_json_lines_carry_request_and_instance(logging_to):
    stream = logging_to(json_lines=True)
    with log.request_context('req-json', UUID):
        LOG.info('inside %s', {'admin_password': 'pw 1'})
    doc = json.loads(stream.getvalue())
    assert doc['context']['request_id'] == 'req-json'
    assert doc['context']['resource_uuid'] == UUID
    assert doc['process'] == os.getpid()
    assert 'pw 1' not in json.dumps(doc, ensure_ascii=False)


def test_huge_line_is_cut_before_masking(logging_to):
    stream = logging_to(log_line_max_length=16384)
    body = json.dumps({'admin_password': 'a' * 10 + ' secret tail',
                       'blob': 'x' * (1 << 20)})
    LOG.info('request %s', body)
    out = stream.getvalue()
    assert '[truncated to 16384 of %d characters]' % (len(body) + 8) in out
    assert len(out) < 16384 + 1000
    assert 'secret tail' not in out


def test_mask_work_is_linear_in_secret_count():
    """Masking a 1 MB line of 50,000 secrets: one key search per secret
    (plus the last, failing one); nothing rescans text it passed."""
    calls = []
    real = log._KEY_RE

    class Counting:
        def search(self, text, pos):
            calls.append(pos)
            return real.search(text, pos)

    line = "password='a b, c', " * 50000
    log._KEY_RE = Counting()
    try:
        masked = log.mask(line)
    finally:
        log._KEY_RE = real
    assert masked == "password='***', " * 50000
    assert len(calls) == 50001
    assert calls == sorted(calls)


def test_unterminated_values_are_masked_to_their_line_only():
    """20,000 lines whose quote never closes (a quote only at the very end):
    each is masked to its own end of line, the next line is still read."""
    text = "password='abc def\n" * 20000 + "tail'"
    masked = log.mask(text)
    assert masked == "password='***\n" * 20000 + "tail'"


# -- set_admin_password (issue 15) ------------------------------------------------------

@pytest.mark.parametrize('form', FORMS)
def test_set_admin_password_request_is_masked(logging_to, form):
    stream = logging_to()
    secret = 'n3w root:pass, "quoted"'
    _emit(form, 'admin_password', secret)
    assert secret not in stream.getvalue()
    assert 'n3w root' not in stream.getvalue()
