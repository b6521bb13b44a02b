"""compute_agent.validation: properties over generated requests (hypothesis)."""

import json

import pytest
from hypothesis import assume
from hypothesis import given
from hypothesis import strategies as st

from compute_agent import exception
from compute_agent import validation

try:
    from tests.unit.validation_cases import (
        DELETE, INST, JSON, PROTOCOL_METHODS, SPAWN_PATHS, UUID, VIF, full_spawn,
        instance, invalid, minimal, vol, with_value)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from validation_cases import (
        DELETE, INST, JSON, PROTOCOL_METHODS, SPAWN_PATHS, UUID, VIF, full_spawn,
        instance, invalid, minimal, vol, with_value)


# -- properties -------------------------------------------------------------

def _check_outcome(method, args):
    try:
        result = validation.validate(method, args)
    except exception.InvalidRequest as e:
        assert isinstance(e.field, str) and e.field
        assert isinstance(e.reason, str) and e.reason
        assert e.uuid is None or e.uuid == e.uuid.lower()
        json.dumps(e.to_dict())
        return None
    assert isinstance(result, dict)
    assert validation.validate(method, result) == result
    return result


@given(method=st.sampled_from(sorted(PROTOCOL_METHODS) + ['bogus']), args=JSON)
def test_arbitrary_args_only_raise_invalid_request(method, args):
    _check_outcome(method, args)


@given(method=st.sampled_from(sorted(PROTOCOL_METHODS)),
       args=st.dictionaries(
           st.sampled_from(['instance', 'image_meta', 'network_info', 'block_device_info',
                            'admin_password', 'injected_files', 'reboot_type', 'timeout',
                            'cleanup', 'instance_uuid', 'tail_lines', 'rescue_image_meta',
                            'rescue_password']),
           JSON, max_size=6))
def test_arbitrary_values_of_known_args_only_raise_invalid_request(method, args):
    _check_outcome(method, args)


@given(path=st.sampled_from(SPAWN_PATHS), value=JSON | st.just(DELETE))
def test_mutated_spawn_only_raises_invalid_request(path, value):
    _check_outcome('spawn', with_value(full_spawn(), path, value))


NAME_CHARS = st.sampled_from(list('aZ09._-/\\ \n\x00:%$\u00e9\u0660'))


@given(name=st.text() | st.text(NAME_CHARS, max_size=70)
       | st.text(st.sampled_from('ab._-'), min_size=60, max_size=66))
def test_accepted_instance_names_are_safe_path_components(name):
    try:
        result = validation.validate('spawn', dict(minimal('spawn'),
                                                   instance=instance(name=name)))
    except exception.InvalidRequest as e:
        assert e.field == 'instance.name'
        return
    accepted = result['instance']['name']
    assert accepted == name
    assert 0 < len(accepted) <= 63
    assert '/' not in accepted and '\x00' not in accepted
    assert accepted not in ('.', '..') and not accepted.startswith('.')
    assert accepted.isascii() and accepted.isprintable() and accepted.strip() == accepted


SECRET = st.text(min_size=1, max_size=30).map(lambda s: 'pw-SECRET-' + s)


def _bad_password(secret, kind):
    return {'type-list': [secret], 'type-dict': {secret: secret}, 'too-long': secret * 30,
            'nested': [[secret, {'x': secret}]]}[kind]


@given(secret=SECRET,
       kind=st.sampled_from(['type-list', 'type-dict', 'too-long', 'nested']),
       other=st.sampled_from([None, INST + ('name',), INST + ('uuid',), ('image_meta',),
                              VIF + ('address',)]))
def test_bad_passwords_never_appear_in_errors(secret, kind, other):
    bad = _bad_password(secret, kind)
    if kind == 'too-long':
        assume(len(bad) > 255)
    args = full_spawn()
    args['admin_password'] = bad
    if other is not None:
        args = with_value(args, other, secret)
    _assert_secret_hidden(invalid('spawn', args), secret)
    rescue = {'instance': args['instance'], 'rescue_password': bad}
    _assert_secret_hidden(invalid('rescue', rescue), secret)


@given(secret=SECRET, other=st.sampled_from([INST + ('name',), INST + ('flavor', 'vcpus'),
                                             ('image_meta', 'id'), VIF + ('devname',)]))
def test_good_passwords_never_appear_when_other_fields_fail(secret, other):
    assume(len(secret) <= 255)
    args = with_value(full_spawn(), other, secret + '/')
    args['admin_password'] = secret
    _assert_secret_hidden(invalid('spawn', args), secret)
    chap = with_value(args, vol(1) + ('auth_password',), [secret])
    _assert_secret_hidden(invalid('spawn', chap), secret)


def _assert_secret_hidden(error, secret):
    for text in (error.message, str(error), repr(error), error.field, error.reason,
                 repr(error.kwargs), json.dumps(error.to_dict())):
        assert secret not in text
        assert 'SECRET' not in text


# -- rebuild (docs: protocol-method-rebuild) --------------------------------

@pytest.mark.parametrize('path,value,field,reason', [
    (('preserve_ephemeral',), 'yes', 'preserve_ephemeral', 'must be a boolean'),
    (('preserve_ephemeral',), 1, 'preserve_ephemeral', 'must be a boolean'),
    (('image_meta',), None, 'image_meta', 'must be an object'),
    (('image_meta', 'id'), DELETE, 'image_meta.id', 'is required'),
    (('image_meta', 'id'), '../etc/passwd', 'image_meta.id', None),
    (('image_meta', 'disk_format'), 'vmdk', 'image_meta.disk_format', None),
    (('image_meta', 'checksum'), 'sha256:xyz', 'image_meta.checksum', None),
    (('image_meta', 'location'), 'not a url', 'image_meta.location', None),
    (('instance_uuid',), 'not-a-uuid', 'instance_uuid', None),
])
def test_rebuild_bad_input_names_the_field(path, value, field, reason):
    error = invalid('rebuild', with_value(minimal('rebuild'), path, value))
    assert error.field == field
    if reason is not None:
        assert error.reason == reason


def test_rebuild_keeps_its_values_and_names_its_instance():
    args = dict(minimal('rebuild'), admin_password='pw', preserve_ephemeral=True,
                image_meta={'id': 'img-2', 'disk_format': 'raw',
                            'checksum': 'sha256:' + 'a' * 64})
    result = validation.validate('rebuild', args)
    assert (result['admin_password'], result['preserve_ephemeral']) == ('pw', True)
    assert result['image_meta']['checksum'] == 'sha256:' + 'a' * 64
    assert validation.instance_uuid_of('rebuild', args) == UUID


@given(secret=SECRET, kind=st.sampled_from(['type-list', 'type-dict', 'too-long', 'nested']))
def test_rebuild_passwords_never_appear_in_errors(secret, kind):
    bad = _bad_password(secret, kind)
    if kind == 'too-long':
        assume(len(bad) > 255)
    _assert_secret_hidden(invalid('rebuild', dict(minimal('rebuild'), admin_password=bad)),
                          secret)
    # A good password beside a bad field never shows either.
    assume(len(secret) <= 255)
    _assert_secret_hidden(invalid('rebuild', dict(
        minimal('rebuild'), admin_password=secret, preserve_ephemeral=secret)), secret)
# -- set_admin_password (issue 15) ------------------------------------------------------

@pytest.mark.parametrize('args, field', [
    ({'admin_password': ''}, 'admin_password'),
    ({'admin_password': 'a\nroot:x'}, 'admin_password'),
    ({'admin_password': 'tab\there'}, 'admin_password'),
    ({'admin_password': 'x' * 256}, 'admin_password'),
    ({'admin_password': None}, 'admin_password'),
    ({'admin_password': 'ok', 'user': 'ro:ot'}, 'user'),
    ({'admin_password': 'ok', 'user': '../etc'}, 'user'),
    ({'admin_password': 'ok', 'user': 'a b'}, 'user'),
    ({'admin_password': 'ok', 'user': ''}, 'user'),
    ({'admin_password': 'ok', 'user': 'x' * 33}, 'user'),
])
def test_set_admin_password_bad_input(args, field):
    secret = args['admin_password']
    error = invalid('set_admin_password', dict(args, instance_uuid=UUID))
    assert error.field == field
    if isinstance(secret, str) and len(secret) > 3:
        assert secret not in str(error)     # the reason never repeats it


def test_set_admin_password_user_defaults_to_root():
    args = validation.validate('set_admin_password', {
        'instance_uuid': UUID, 'admin_password': 'p:ss w0rd'})
    assert args['user'] == 'root'
    assert args['admin_password'] == 'p:ss w0rd'
