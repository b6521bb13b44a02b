"""Validation of request ``args`` against ``schemas`` (docs: protocol-methods, protocol-objects).

``validate(method, args)`` checks a request and returns a normalized copy
(defaults filled in, UUIDs and MAC addresses lower-cased). A failure raises
``exception.InvalidRequest(field, reason, uuid=...)``: ``field`` is a path
such as ``instance.flavor.memory_mb`` or ``network_info[0].address``;
``reason`` is a short phrase that never repeats the offending value (so a
password, or anything else, cannot leak into logs, failure replies or state
reports through it).

After the schema, the rules that span fields or need the host: an
``image_meta.id`` must be the ``instance.image_ref`` (docs:
protocol-image-meta), and every ``driver_volume_type`` must be an installed volume driver
plugin.
"""

import copy
import itertools
import json
import re

from compute_agent import exception
from compute_agent import json_schema
from compute_agent import plugins
from compute_agent import rules
from compute_agent.netfilter import spec
from compute_agent.schemas import (  # noqa: F401  (re-exported)
    ARGS, DEFS, FORMAT_REASONS, FORMATS, INT_MAX, METHODS, SCHEMAS,
    SECRET_FIELDS, UUID_RE)


# -- the checker ------------------------------------------------------------

_PATTERNS = {}


def _ecma_pattern(pattern):
    if pattern not in _PATTERNS:
        _PATTERNS[pattern] = rules.compile_pattern(pattern)
    return _PATTERNS[pattern]


CHECKER = json_schema.Checker(DEFS, FORMATS, _ecma_pattern)
for _schema in SCHEMAS.values():
    CHECKER.compile(_schema)     # an unsupported keyword fails at import


# -- errors -----------------------------------------------------------------

MAX_ERRORS = 50     # errors collected before the best one is chosen

_IDENT = re.compile(r'[A-Za-z_][A-Za-z0-9_]*\Z')
_TYPE_WORDS = {'integer': 'an integer', 'string': 'a string', 'object': 'an object',
               'array': 'a list', 'boolean': 'a boolean', 'null': 'null',
               'number': 'a number'}
# When one field fails several keywords, the first of these is reported.
_KEYWORD_RANK = {'type': 0, 'required': 1, 'additionalProperties': 2, 'const': 3,
                 'enum': 3, 'minItems': 4, 'maxItems': 4, 'minimum': 5, 'maximum': 5,
                 'pattern': 6, 'format': 7, 'minLength': 8, 'maxLength': 8}


def _short(name, limit=64):
    return name if len(name) <= limit else name[:limit] + '...'


def field_path(parts):
    """``['network_info', 0, 'address']`` -> ``network_info[0].address``."""
    out = ''
    for part in parts:
        if isinstance(part, int):
            out += '[%d]' % part
        elif _IDENT.match(part):
            out += ('.' if out else '') + _short(part)
        else:
            out += '[%s]' % json.dumps(_short(part))
    return out


def _type_reason(schema):
    types = schema.get('type', ())
    types = [types] if isinstance(types, str) else list(types)
    words = [_TYPE_WORDS.get(t, t) for t in types if t != 'null']
    text = ' or '.join(words)
    if 'integer' in types:
        low, high = schema.get('minimum'), schema.get('maximum')
        if low is not None and high is not None and high != INT_MAX:
            text += ' between %d and %d' % (low, high)
        elif low == 1:
            text += ' > 0'
        elif low is not None:
            text += ' >= %d' % low
    if 'null' in types:
        text += ' or null'
    return 'must be ' + text


def _describe(error):
    """(path parts, reason, rank) of one schema error."""
    parts = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    keyword = error.validator
    rank = _KEYWORD_RANK.get(keyword, 9)
    if keyword == 'required':
        missing = [name for name in error.validator_value
                   if name not in error.instance]
        return parts + [missing[0]], 'is required', rank
    if keyword == 'additionalProperties':
        allowed = schema.get('properties', {})
        extra = sorted(name for name in error.instance if name not in allowed)
        return (parts + [extra[0]],
                'unexpected argument' if not parts else 'unexpected key', rank)
    if 'x-reason' in schema:
        return parts, schema['x-reason'], rank
    if keyword == 'maximum' and error.validator_value == INT_MAX:
        return parts, 'must be at most %d' % INT_MAX, rank
    if keyword in ('type', 'enum') and 'enum' in schema:
        choices = [c for c in schema['enum'] if c is not None]
        reason = 'must be one of: ' + ', '.join(map(str, choices))
        if None in schema['enum']:
            reason += ', or null'
        return parts, reason, rank
    if keyword in ('type', 'minimum', 'maximum'):
        return parts, _type_reason(schema), rank
    if keyword == 'pattern':
        return parts, rules.reason_for(error.validator_value), rank
    if keyword == 'format':
        return parts, FORMAT_REASONS.get(error.validator_value, 'is malformed'), rank
    if keyword == 'maxLength':
        return parts, 'must be at most %d characters' % error.validator_value, rank
    if keyword == 'maxItems' and schema.get('type') == 'array':
        return parts, 'must have at most %d items' % error.validator_value, rank
    if keyword == 'minLength':
        return parts, 'must be at least %d characters' % error.validator_value, rank
    return parts, 'is invalid (%s)' % keyword, rank


def _best(errors):
    """The most specific error: deepest field, then by keyword, then by name."""
    described = [_describe(error) for error in errors]
    parts, reason, _ = min(
        described,
        key=lambda d: (-len(d[0]), d[2], field_path(d[0]), d[1]))
    return field_path(parts), reason


# -- normalization ----------------------------------------------------------

def _normalize(schema, value):
    """Fill defaults and apply x-normalize below ``value`` (already valid)."""
    schema = CHECKER.resolve(schema)
    if isinstance(value, dict):
        for name, sub in schema.get('properties', {}).items():
            sub_resolved = CHECKER.resolve(sub)
            if name not in value and 'default' in sub_resolved:
                value[name] = copy.deepcopy(sub_resolved['default'])
            if name in value:
                value[name] = _normalize(sub, value[name])
        for branch in schema.get('allOf', ()):
            if 'if' in branch and CHECKER.is_valid(branch['if'], value):
                value = _normalize(branch.get('then', {}), value)
    elif isinstance(value, list):
        if 'prefixItems' in schema:
            value = [_normalize(sub, item)
                     for sub, item in zip(schema['prefixItems'], value)]
        elif 'items' in schema:
            value = [_normalize(schema['items'], item) for item in value]
    elif isinstance(value, str) and schema.get('x-normalize') == 'lower':
        value = value.lower()
    return value


# -- public API -------------------------------------------------------------

_UUID = rules.UUID.regex
_BY_UUID = frozenset(m for m, a in ARGS.items() if 'instance_uuid' in a)


def instance_uuid_of(method, args):
    """The instance uuid a request names, lower-cased, or None.

    Best effort, for error reports: it does not need the rest of ``args`` to
    be valid, only the uuid itself.
    """
    if not isinstance(args, dict):
        return None
    instance = args.get('instance')
    candidates = []
    if method not in _BY_UUID:
        candidates.append(instance.get('uuid') if isinstance(instance, dict) else None)
    if method in _BY_UUID or method not in METHODS:
        candidates.append(args.get('instance_uuid'))
    for uuid in candidates:
        if isinstance(uuid, str) and _UUID.search(uuid):
            return uuid.lower()
    return None


def validate(method, args):
    """Check ``args`` of ``method``; return a normalized deep copy.

    Raises ``InvalidRequest`` naming the field (``method``, ``args``, an
    argument or a path into one) and the reason, with ``uuid`` set to the
    instance uuid when one can be read.
    """
    if not isinstance(method, str) or method not in SCHEMAS:
        raise exception.InvalidRequest('method', 'unknown method',
                                       uuid=instance_uuid_of(None, args))
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise exception.InvalidRequest('args', 'must be an object')
    # Bounded: a list of 200,000 bad items must not cost 200,000 errors.
    errors = list(itertools.islice(CHECKER.iter_errors(SCHEMAS[method], args),
                                   MAX_ERRORS))
    if errors:
        field, reason = _best(errors)
        raise exception.InvalidRequest(field, reason,
                                       uuid=instance_uuid_of(method, args))
    try:
        _check_across(method, args)
    except exception.InvalidRequest as e:
        raise exception.InvalidRequest(e.field, e.reason,
                                       uuid=instance_uuid_of(method, args)) from None
    args = _normalize(SCHEMAS[method], copy.deepcopy(args))
    if method == 'spawn' and args['instance'].get('image_ref') is None:
        # The root disk's image: image_meta.id is required, image_ref is not
        # (docs: protocol-image-meta), and they name the same image.
        args['instance']['image_ref'] = args['image_meta']['id']
    _check_filters(method, args)
    return args


def _check_filters(method, args):
    """Cross-field checks of VIF filters (docs: protocol-objects)."""
    uuid = instance_uuid_of(method, args)
    if 'network_info' in args:
        spec.check_network_info(args['network_info'], uuid)
    if method == 'update_security_rules':
        spec.check_rules(args['rules'], 'rules', uuid)


def _check_across(method, args):
    """The rules a schema cannot say (``args`` passed the schema)."""
    if method == 'spawn':
        rules.check_image_meta_id(args['instance'], args['image_meta'])
    bdi = args.get('block_device_info') or {}
    for i, bdm in enumerate(bdi.get('block_device_mapping') or ()):
        plugins.check_name(
            plugins.VOLUME_DRIVERS, bdm['connection_info']['driver_volume_type'],
            'block_device_info.block_device_mapping[%d].connection_info.'
            'driver_volume_type' % i)
