"""Bounds on what one message may hold ([rpc] max_message_* options).

Every message must get its verdict in bounded time and memory, whatever a
sender puts in it (the protocol docs 1.1 section 5). The body size is checked
before anything is decoded; JSON nested past Python's recursion limit cannot
be decoded at all; everything else (depth, string and key lengths, the
number of values, text that cannot be encoded) is checked by one iterative
walk over the decoded payload, so no later stage (validation, the journal,
logs, metrics, replies) ever sees it.
"""

import dataclasses
import json
import re

_SURROGATE = re.compile('[\ud800-\udfff]')
_SURROGATE_ESCAPE = re.compile(r'\\u[dD][89a-fA-F]')
_IDENT = re.compile(r'[A-Za-z_][A-Za-z0-9_]*\Z')
SHOWN = 64      # characters of a hostile name shown in errors and logs


class TooLarge(ValueError):
    """The body cannot be decoded within the limits (dead-lettered unread)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Defaults equal the options' defaults (conf/rpc.py)."""

    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_string: int = 256 * 1024
    max_key: int = 255
    max_items: int = 20000

    @classmethod
    def from_conf(cls, conf):
        r = conf.rpc
        return cls(max_bytes=r.max_message_bytes, max_depth=r.max_json_depth,
                   max_string=r.max_string_length, max_key=r.max_key_length,
                   max_items=r.max_message_items)


def check_size(body, limits):
    if limits is not None and len(body) > limits.max_bytes:
        raise TooLarge('the body of %d bytes is larger than [rpc] '
                       'max_message_bytes (%d)' % (len(body), limits.max_bytes))


def parse_json(text, limits):
    """``json.loads`` that turns a nesting too deep to decode into TooLarge.

    The C decoder recurses once per level and stops at the interpreter's
    recursion limit with RecursionError; anything shallower than that is
    decoded (bounded by the body size) and measured by ``problem``.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise TooLarge('JSON nested too deep to decode%s' % (
            ' ([rpc] max_json_depth is %d)' % limits.max_depth
            if limits else '')) from None


def encodable(text):
    """False for text holding lone UTF-16 surrogates (json.loads accepts
    ``"\\ud800"``; encoding it to UTF-8 later raises)."""
    return text.isascii() or not _SURROGATE.search(text)


def clean(text, max_length):
    return isinstance(text, str) and len(text) <= max_length and encodable(text)


def safe_text(text, limit=SHOWN):
    """A bounded, printable, encodable rendering of any string."""
    shown = json.dumps(str(text)[:limit])[1:-1]
    return shown + '...' if len(text) > limit else shown


def field_path(parts):
    """``['network_info', 0, 'id']`` -> ``network_info[0].id``; hostile keys
    are shortened and escaped."""
    out = ''
    for part in parts:
        if isinstance(part, int):
            out += '[%d]' % part
        elif _IDENT.match(part) and len(part) <= SHOWN:
            out += ('.' if out else '') + part
        else:
            out += '[%s]' % json.dumps(safe_text(part))
    return out


def _path(node):
    parts = []
    while node is not None:
        node, part = node
        parts.append(part)
    parts.reverse()
    # Argument fields are named as validation names them (relative to args).
    if parts and parts[0] == 'args':
        parts = parts[1:] or ['args']
    return field_path(parts)


def within(text, limits):
    """True when the JSON document ``text`` cannot hold a value past any
    limit ``problem`` checks, judged from the text alone (C-speed string
    scans, a fraction of a walk: most requests are small and plain).

    Each bound is an over-estimate: a value takes at least one character,
    so there are no more values than characters; a decoded string is no
    longer than its JSON text, whose characters between two quotes bound
    every key (unless the text holds an escaped quote); nesting is no
    deeper than the brackets in all; a lone surrogate is either a literal
    character or a ``\\uD800``-``\\uDFFF`` escape. False only means
    ``problem`` has to look.
    """
    if not isinstance(text, str):
        return False
    n = len(text)
    if n > limits.max_items or n > limits.max_string:
        return False
    if text.count('{') + text.count('[') > limits.max_depth:
        return False
    if n > limits.max_key and ('\\"' in text or max(
            map(len, text.split('"'))) > limits.max_key):
        return False
    if not text.isascii():
        if _SURROGATE.search(text):
            return False
    if '\\u' in text and _SURROGATE_ESCAPE.search(text):
        return False
    return True


def problem(payload, limits):
    """(field, reason) of the first value past a limit, or None.

    Iterative (no recursion, whatever the depth); a container's children
    are counted before they are looked at, so it stops at the first
    finding and never handles more than ``max_items`` values.
    """
    too_many = ('message', 'holds more than %d values ([rpc] '
                'max_message_items)' % limits.max_items)
    seen = 1        # values counted so far (the payload itself)
    # (value, depth, path node); a path node is (parent node, key).
    stack = [(payload, 1, None)]
    while stack:
        value, depth, node = stack.pop()
        if isinstance(value, str):
            if len(value) > limits.max_string:
                return _path(node), ('is longer than %d characters ([rpc] '
                                     'max_string_length)' % limits.max_string)
            if not encodable(value):
                return _path(node), 'is not valid Unicode text (lone surrogate)'
            continue
        if isinstance(value, dict):
            children = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        seen += len(value)
        if seen > limits.max_items:
            return too_many
        if depth > limits.max_depth:
            return (_path(node) or 'message',
                    'is nested deeper than %d levels ([rpc] max_json_depth)'
                    % limits.max_depth)
        for key, child in children:
            if isinstance(key, str):
                if len(key) > limits.max_key:
                    return (_path(node) or 'message',
                            'has a key longer than %d characters ([rpc] '
                            'max_key_length)' % limits.max_key)
                if not encodable(key):
                    return (_path(node) or 'message',
                            'has a key that is not valid Unicode text '
                            '(lone surrogate)')
            stack.append((child, depth + 1, (node, key)))
    return None
