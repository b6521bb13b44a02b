"""compute_agent.json_schema against the jsonschema package (the oracle).

The agent checks requests with its own compiled checker (json_schema.py says
why); jsonschema, a test dependency only, is the reference here. For every
request below, both must find the same errors (path, keyword, schema,
instance) and validation must report the same field and reason from them.
"""

import itertools

import jsonschema
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jsonschema import validators

from compute_agent import json_schema
from compute_agent import rules
from compute_agent import schemas
from compute_agent import validation

try:
    from tests.unit.validation_cases import (
        DELETE, JSON, PROTOCOL_METHODS, SPAWN_PATHS, full_spawn, minimal, paths,
        with_value)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from validation_cases import (
        DELETE, JSON, PROTOCOL_METHODS, SPAWN_PATHS, full_spawn, minimal, paths,
        with_value)


# -- the oracle: jsonschema set up as validation.py did before ---------------

def _pattern(validator, pattern, value, schema):
    if validator.is_type(value, 'string') and \
            not rules.compile_pattern(pattern).search(value):
        yield jsonschema.ValidationError('pattern')


_FORMATS = jsonschema.FormatChecker(formats=())
for _name, _check in schemas.FORMATS.items():
    _FORMATS.checks(_name)(_check)
_Base = jsonschema.Draft202012Validator
_Oracle = validators.extend(
    _Base, validators={'pattern': _pattern},
    type_checker=_Base.TYPE_CHECKER.redefine(
        'integer', lambda _c, v: isinstance(v, int) and not isinstance(v, bool)))
ORACLE = {method: _Oracle(schema, format_checker=_FORMATS)
          for method, schema in schemas.SCHEMAS.items()}


def _key(error):
    return (tuple(error.absolute_path), error.validator, id(error.schema),
            repr(error.instance))


def assert_same_errors(method, args):
    theirs = sorted(map(_key, ORACLE[method].iter_errors(args)))
    ours = sorted(map(_key, validation.CHECKER.iter_errors(
        schemas.SCHEMAS[method], args)))
    assert ours == theirs
    if theirs:
        ours = list(itertools.islice(validation.CHECKER.iter_errors(
            schemas.SCHEMAS[method], args), validation.MAX_ERRORS))
        theirs = list(itertools.islice(ORACLE[method].iter_errors(args),
                                       validation.MAX_ERRORS))
        assert validation._best(ours) == validation._best(theirs)


# -- requests: every field of every method, set to each kind of bad value ----

VALUES = [None, True, False, 0, -1, 1, 1.0, 1.5, 2 ** 31, float('nan'), '',
          'x' * 300, 'vm-1', 'A\n', '/dev/vdz', '10.0.0.1', [], ['a'], [1, 2],
          {}, {'k': 1}, {'': 'x' * 300}, DELETE]


NBD = {'driver_volume_type': 'nbd', 'data': {'host': 'h1', 'port': 10809}}
BASES = [(m, minimal(m)) for m in sorted(PROTOCOL_METHODS)] + [
    ('spawn', full_spawn()),
    ('attach_volume', dict(minimal('attach_volume'), connection_info=NBD)),
    ('migrate', dict(minimal('migrate'),
                     flavor={'memory_mb': 1, 'vcpus': 1, 'root_gb': 0})),
    ('update_security_rules', dict(minimal('update_security_rules'), rules=[
        {'direction': 'ingress', 'protocol': 'tcp', 'port_range_min': 22,
         'port_range_max': 22, 'remote_ip_prefix': '10.0.0.0/8'}])),
]
CASES = [(m, with_value(base, path, value))
         for m, base in BASES for path in paths(base) for value in VALUES]


@pytest.mark.parametrize('method, args', BASES)
def test_valid_requests_have_no_errors_in_either(method, args):
    assert_same_errors(method, args)
    assert validation.CHECKER.is_valid(schemas.SCHEMAS[method], args)


def test_every_field_set_to_every_kind_of_value():
    assert len(CASES) > 2000
    for method, args in CASES:
        assert_same_errors(method, args)


@pytest.mark.parametrize('data', [
    {'socket': '/run/nbd.sock'},                          # oneOf: the second
    {'host': 'h1', 'port': 1, 'socket': '/run/nbd.sock'},  # oneOf: neither
    {'host': 'h1'}, {}, {'socket': '/run/nbd.sock', 'port': 1},
    {'host': 'h1', 'port': '70000'}, {'host': '[::1]', 'port': '1'},
])
def test_nbd_data_branches(data):
    args = dict(minimal('attach_volume'),
                connection_info={'driver_volume_type': 'nbd', 'data': data})
    assert_same_errors('attach_volume', args)


@pytest.mark.parametrize('metadata', [
    {'': 'x'}, {'k' * 256: 'x'}, {'a': 1}, {'a': 'v' * 256}, {'a': None, '': []}])
def test_metadata_keys_and_values(metadata):
    args = with_value(full_spawn(), ('instance', 'metadata'), metadata)
    assert_same_errors('spawn', args)


def test_many_errors_are_reported_alike():
    """More errors than MAX_ERRORS: the same first ones, the same verdict."""
    args = full_spawn()
    args['network_info'] = [{'id': i, 'address': i} for i in range(64)]
    args['injected_files'] = [[1, 2]] * 64
    assert_same_errors('spawn', args)
    bdm = args['block_device_info']['block_device_mapping']
    bdm[:] = [{'mount_device': 5}] * 70
    assert_same_errors('spawn', args)


@settings(max_examples=300)
@given(path=st.sampled_from(SPAWN_PATHS), value=JSON | st.just(DELETE))
def test_mutated_spawn(path, value):
    assert_same_errors('spawn', with_value(full_spawn(), path, value))


@settings(max_examples=300)
@given(method=st.sampled_from(sorted(PROTOCOL_METHODS)),
       args=st.dictionaries(
           st.sampled_from(['instance', 'instance_uuid', 'image_meta', 'network_info',
                            'block_device_info', 'connection_info', 'vif', 'rules',
                            'flavor', 'migration', 'volume_id', 'dest_host']),
           JSON, max_size=5))
def test_arbitrary_args(method, args):
    assert_same_errors(method, args)


# -- the checker itself -------------------------------------------------------

def test_an_unknown_keyword_fails_the_compile():
    checker = json_schema.Checker({}, {}, rules.compile_pattern)
    with pytest.raises(ValueError, match='uniqueItems'):
        checker.compile({'type': 'array', 'uniqueItems': True})
    with pytest.raises(ValueError, match='unsupported'):
        checker.compile({'$ref': '#/$defs/missing'})


def test_a_recursive_schema_compiles_and_checks():
    defs = {'tree': {'type': 'object',
                     'properties': {'kids': {'type': 'array',
                                             'items': {'$ref': '#/$defs/tree'}}}}}
    checker = json_schema.Checker(defs, {}, rules.compile_pattern)
    schema = {'$ref': '#/$defs/tree'}
    assert checker.is_valid(schema, {'kids': [{'kids': []}]})
    (error,) = checker.iter_errors(schema, {'kids': [{'kids': [5]}]})
    assert (list(error.absolute_path), error.validator) == (
        ['kids', 0, 'kids', 0], 'type')


@pytest.mark.parametrize('one, two, same', [
    (True, 1, False), (1, 1.0, True), (None, None, True), ('a', 'a', True),
    ([1, True], [1, True], True), ([1, True], [1, 1], False),
    ({'a': [False]}, {'a': [0]}, False), ({'a': 1}, {'a': 1, 'b': 2}, False),
    ([], {}, False), ('1', 1, False)])
def test_json_equality(one, two, same):
    assert json_schema.equal(one, two) is same
    assert json_schema.equal(two, one) is same

