"""JSON Schema (Draft 2020-12) checking, for the keywords ``schemas.py`` uses.

Why not the ``jsonschema`` package: importing it and building the 39
method validators cost the agent ~3.8 MB (it loads every draft's
metaschema and keeps a reference registry per validator), to check schemas
that use two dozen keywords, local ``$ref``s only and no dynamic scope.
Here each schema is compiled once into closures, and the ``$defs`` the
methods share are compiled once for all of them: bench/scale.py's agent is
2.3 MB smaller, and a full spawn's args are checked in 0.17 ms instead of
1.1 ms.

Errors carry what ``jsonschema.ValidationError`` carries and validation.py
reads (``absolute_path``, ``validator``, ``validator_value``, ``schema``,
``instance``), and come in jsonschema's order (schema keys as written, list
items and properties in order), so the first N of them are the same ones.
tests/unit/test_json_schema.py checks the errors against jsonschema's, which
also still checks the schemas against the metaschema.

A keyword this module does not know fails the compile: a schema that
gained one cannot be checked silently without it.
"""

import itertools
import operator

# Keywords that only annotate (validation.py reads default, x-reason and
# x-normalize itself; then/else belong to "if").
_ANNOTATIONS = frozenset({'$schema', '$defs', 'default', 'x-reason',
                          'x-normalize', 'then', 'else', 'title',
                          'description'})


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


TYPES = {
    'object': lambda v: isinstance(v, dict),
    'array': lambda v: isinstance(v, list),
    'string': lambda v: isinstance(v, str),
    # A JSON integer: true and 1.0 are not integers (schemas.py).
    'integer': lambda v: isinstance(v, int) and not isinstance(v, bool),
    'number': _is_number,
    'boolean': lambda v: isinstance(v, bool),
    'null': lambda v: v is None,
}


def equal(one, two):
    """JSON equality: true is not 1, lists and objects compare deeply."""
    if isinstance(one, bool) or isinstance(two, bool):
        return type(one) is type(two) and one == two
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(equal(one[k], two[k]) for k in one)
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(map(equal, one, two))
    if isinstance(one, (dict, list)) or isinstance(two, (dict, list)):
        return False
    return one == two


class Error:
    """One failed keyword: the instance at ``absolute_path`` failed
    ``validator`` (the keyword) with value ``validator_value`` of ``schema``."""

    __slots__ = ('absolute_path', 'validator', 'validator_value', 'schema',
                 'instance')

    def __init__(self, path, keyword, value, schema, instance):
        self.absolute_path = path
        self.validator = keyword
        self.validator_value = value
        self.schema = schema
        self.instance = instance

    def __repr__(self):
        return 'Error(%r, %s)' % (list(self.absolute_path), self.validator)


class Checker:
    """Checks instances against schemas whose ``$ref``s point into ``defs``.

    ``formats``: format name -> check(value) -> bool (a format not listed
    passes, as in JSON Schema); ``pattern``: pattern -> compiled regex
    (ECMA-262 semantics are the caller's business).
    """

    def __init__(self, defs, formats, pattern):
        self._defs = defs
        self._formats = formats
        self._pattern = pattern
        self._compiled = {}     # id(schema) -> (schema, run)

    def iter_errors(self, schema, instance):
        """Every error of ``instance``, lazily (take as many as needed)."""
        return self.compile(schema)(instance, ())

    def is_valid(self, schema, instance):
        return next(self.compile(schema)(instance, ()), None) is None

    def compile(self, schema):
        """``run(instance, path)``: an iterator of the errors below ``path``."""
        entry = self._compiled.get(id(schema))
        if entry is not None:
            return entry[1]
        steps = []

        def run(instance, path):
            for keyword, value, test, apply in steps:
                if test is not None:
                    if not test(instance):
                        yield Error(path, keyword, value, schema, instance)
                else:
                    yield from apply(instance, path)
        # Registered before its keywords compile: a $ref may lead back here.
        self._compiled[id(schema)] = (schema, run)
        try:
            for keyword, value in schema.items():
                if keyword in _ANNOTATIONS:
                    continue
                make = _KEYWORDS.get(keyword)
                if make is None:
                    raise ValueError('JSON Schema keyword %r is not supported'
                                     % keyword)
                test, apply = make(self, value, schema)
                steps.append((keyword, value, test, apply))
        except Exception:
            del self._compiled[id(schema)]
            raise
        return run

    def resolve(self, schema):
        """``schema``, or what its ``$ref`` (and theirs) lead to."""
        while isinstance(schema, dict) and '$ref' in schema:
            ref = schema['$ref']
            name = ref[len('#/$defs/'):]
            if not ref.startswith('#/$defs/') or name not in self._defs:
                raise ValueError('unsupported $ref %r' % ref)
            schema = self._defs[name]
        return schema


# -- keywords: each returns (test, None) or (None, apply) -------------------
# test(instance) -> bool for a keyword that fails as one error of its own;
# apply(instance, path) -> errors for one that looks below or yields several.

def _type(checker, value, schema):
    tests = tuple(TYPES[t] for t in ([value] if isinstance(value, str) else value))
    return (lambda v: any(t(v) for t in tests)), None


def _enum(checker, value, schema):
    return (lambda v: any(equal(choice, v) for choice in value)), None


def _const(checker, value, schema):
    return (lambda v: equal(value, v)), None


def _pattern(checker, value, schema):
    search = checker._pattern(value).search
    return (lambda v: not isinstance(v, str) or search(v) is not None), None


def _format(checker, value, schema):
    check = checker._formats.get(value)
    if check is None:
        return (lambda v: True), None
    return check, None


def _bound(kind, beyond):
    """A min/max keyword: fails when ``beyond(size, bound)`` (so NaN, which
    is beyond nothing, passes, as in jsonschema)."""
    applies = TYPES[kind]
    size = len if kind in ('string', 'array') else (lambda v: v)

    def make(checker, value, schema):
        return (lambda v: not applies(v) or not beyond(size(v), value)), None
    return make


def _required(checker, value, schema):
    def apply(instance, path):
        if isinstance(instance, dict):
            for name in value:
                if name not in instance:
                    yield Error(path, 'required', value, schema, instance)
    return None, apply


def _properties(checker, value, schema):
    runs = [(name, checker.compile(sub)) for name, sub in value.items()]

    def apply(instance, path):
        if isinstance(instance, dict):
            for name, run in runs:
                if name in instance:
                    yield from run(instance[name], path + (name,))
    return None, apply


def _additional(checker, value, schema):
    known = schema.get('properties', {})
    if value is True:
        return (lambda v: True), None
    if value is False:
        def apply(instance, path):
            if isinstance(instance, dict) and any(k not in known for k in instance):
                yield Error(path, 'additionalProperties', value, schema, instance)
        return None, apply
    run = checker.compile(value)

    def apply_schema(instance, path):
        if isinstance(instance, dict):
            for name, item in instance.items():
                if name not in known:
                    yield from run(item, path + (name,))
    return None, apply_schema


def _property_names(checker, value, schema):
    run = checker.compile(value)

    def apply(instance, path):
        if isinstance(instance, dict):
            for name in instance:
                yield from run(name, path)   # the object's path, as jsonschema
    return None, apply


def _items(checker, value, schema):
    run = checker.compile(value)
    start = len(schema.get('prefixItems', ()))

    def apply(instance, path):
        if isinstance(instance, list):
            for index in range(start, len(instance)):
                yield from run(instance[index], path + (index,))
    return None, apply


def _prefix_items(checker, value, schema):
    runs = [checker.compile(sub) for sub in value]

    def apply(instance, path):
        if isinstance(instance, list):
            for index, (run, item) in enumerate(zip(runs, instance)):
                yield from run(item, path + (index,))
    return None, apply


def _ref(checker, value, schema):
    # A target still compiling (a recursive schema) is already registered.
    return None, checker.compile(checker.resolve({'$ref': value}))


def _all_of(checker, value, schema):
    runs = [checker.compile(sub) for sub in value]

    def apply(instance, path):
        for run in runs:
            yield from run(instance, path)
    return None, apply


def _any_of(checker, value, schema):
    runs = [checker.compile(sub) for sub in value]
    return (lambda v: any(next(run(v, ()), None) is None for run in runs)), None


def _one_of(checker, value, schema):
    runs = [checker.compile(sub) for sub in value]

    def apply(instance, path):
        # Like jsonschema: one error if none is valid, one if several are.
        valid = (next(run(instance, ()), None) is None for run in runs)
        if sum(itertools.islice(filter(None, valid), 2)) != 1:
            yield Error(path, 'oneOf', value, schema, instance)
    return None, apply


def _not(checker, value, schema):
    run = checker.compile(value)
    return (lambda v: next(run(v, ()), None) is not None), None


def _if(checker, value, schema):
    test = checker.compile(value)
    then = checker.compile(schema['then']) if 'then' in schema else None
    otherwise = checker.compile(schema['else']) if 'else' in schema else None

    def apply(instance, path):
        branch = then if next(test(instance, ()), None) is None else otherwise
        if branch is not None:
            yield from branch(instance, path)
    return None, apply


_KEYWORDS = {
    'type': _type,
    'enum': _enum,
    'const': _const,
    'pattern': _pattern,
    'format': _format,
    'minLength': _bound('string', operator.lt),
    'maxLength': _bound('string', operator.gt),
    'minItems': _bound('array', operator.lt),
    'maxItems': _bound('array', operator.gt),
    'minimum': _bound('number', operator.lt),
    'maximum': _bound('number', operator.gt),
    'required': _required,
    'properties': _properties,
    'additionalProperties': _additional,
    'propertyNames': _property_names,
    'items': _items,
    'prefixItems': _prefix_items,
    '$ref': _ref,
    'allOf': _all_of,
    'anyOf': _any_of,
    'oneOf': _one_of,
    'not': _not,
    'if': _if,
}
