"""A pure-Python element for model objects built from scratch.

An lxml element costs a libxml2 document and a call into C for each
attribute; a guest has ~60 elements. A new object's tree is made of Nodes
when something needs one (``xmlbase``: until then it is only events, and
``xmltemplate`` writes its text through this module's writer). ``Node``
has just the part of lxml's element API that ``xmlbase`` uses, and
``serialize`` writes it exactly as lxml's ``tostring`` would.
``materialize`` turns a tree into lxml elements (one parse) when something
needs a real element (RelaxNG, ``.node``); each Node then points at its
lxml twin so views made before stay live.
"""

import re

from lxml import etree

# What lxml refuses in a string: C0 controls but tab/newline/CR, U+FFFE/F,
# lone surrogates.
_BAD = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]')
_BAD_MSG = ('All strings must be XML compatible: Unicode or ASCII, '
            'no NULL bytes or control characters')


def check(text):
    """Raise ValueError (as lxml does) for text XML cannot hold."""
    if _BAD.search(text) is not None:
        raise ValueError(_BAD_MSG)
    return text


class Node:
    """tag, attrib, text and ordered children; no tails, no namespaces."""

    __slots__ = ('tag', 'attrib', 'text', 'children', 'parent', 'lx')

    def __init__(self, tag):
        self.tag = tag
        self.attrib = {}
        self.text = None
        self.children = []
        self.parent = None
        self.lx = None          # the lxml twin once materialized

    def get(self, key, default=None):
        return self.attrib.get(key, default)

    def set(self, key, value):
        self.attrib[key] = value

    def find(self, tag):
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def findall(self, tag):
        return [c for c in self.children if c.tag == tag]

    def getparent(self):
        return self.parent

    def __len__(self):
        return len(self.children)

    def __iter__(self):
        return iter(self.children)

    def _adopt(self, child):
        if child.parent is not None:    # lxml moves an element appended twice
            child.parent.remove(child)
        child.parent = self

    def append(self, child):
        self._adopt(child)
        self.children.append(child)

    def insert(self, index, child):
        self._adopt(child)
        self.children.insert(index, child)

    def remove(self, child):
        for i, c in enumerate(self.children):
            if c is child:
                del self.children[i]
                child.parent = None
                return
        raise ValueError('Element is not a child of this node.')


# Characters that need escaping: one regex search is cheaper than seven
# ``in`` tests, and most values need none.
_ATTR_SPECIAL = re.compile('[&<>"\n\r\t]').search
_TEXT_SPECIAL = re.compile('[&<>\r]').search


def _escape_attr(value, ascii_only=False):
    if _ATTR_SPECIAL(value) is not None:
        value = (value.replace('&', '&amp;').replace('<', '&lt;')
                 .replace('>', '&gt;').replace('"', '&quot;')
                 .replace('\n', '&#10;').replace('\r', '&#13;')
                 .replace('\t', '&#9;'))
    if ascii_only and not value.isascii():
        # lxml's quirk for the attributes of an element that is not its
        # document's root, when it is serialized alone.
        value = ''.join(c if c < '\x80' else '&#x%X;' % ord(c) for c in value)
    return value


def _escape_text(text):
    if _TEXT_SPECIAL(text) is not None:
        text = (text.replace('&', '&amp;').replace('<', '&lt;')
                .replace('>', '&gt;').replace('\r', '&#13;'))
    return text


# libxml2 indents by two spaces a level, up to 30 levels.
_INDENT = ['\n' + '  ' * min(depth, 30) for depth in range(32)]


def _write(node, out, values, depth):
    """Write ``node`` as libxml2 does: pretty at ``depth``, or not (None).

    The hot loop of every domain XML the agent writes: one list append per
    piece, one join at the end. Values are written as they are and also go
    to ``values``, which ``serialize`` checks for escaping in one search.
    """
    tag = node.tag
    out.append('<' + tag)
    for key, value in node.attrib.items():
        values.append(value)
        out.append(' ' + key + '="' + value + '"')
    children, text = node.children, node.text
    if not children:
        if text is None:
            out.append('/>')
        else:
            values.append(text)
            out.append('>' + text + '</' + tag + '>')
        return
    if text is not None:        # mixed content: libxml2 stops indenting
        values.append(text)
        out.append('>' + text)
        depth = None
    else:
        out.append('>')
    if depth is None:
        for child in children:
            _write(child, out, values, None)
        out.append('</' + tag + '>')
    else:
        indent = _INDENT[depth + 1] if depth < 30 else _INDENT[31]
        depth += 1
        for child in children:
            out.append(indent)
            _write(child, out, values, depth)
        out.append(_INDENT[min(depth - 1, 31)] + '</' + tag + '>')


def _escaped(node, ascii_only=False):
    """A copy of ``node``'s tree with every value escaped, for ``_write``."""
    twin = Node(node.tag)
    twin.attrib = {k: _escape_attr(v, ascii_only) for k, v in node.attrib.items()}
    twin.text = None if node.text is None else _escape_text(node.text)
    twin.children = [_escaped(child) for child in node.children]
    return twin


def serialize(node, pretty=True):
    """The text lxml's ``tostring(encoding='unicode')`` gives for ``node``."""
    out, values = [], []
    depth = 0 if pretty else None
    if node.parent is None:
        _write(node, out, values, depth)
        # Usually no value needs escaping; else write an escaped copy.
        if _ATTR_SPECIAL('\0'.join(values)) is not None:
            out = []
            _write(_escaped(node), out, values, depth)
    else:
        # A sub-element alone (hot-plug): lxml's attribute quirk, see
        # _escape_attr.
        _write(_escaped(node, ascii_only=True), out, values, depth)
    if pretty:
        out.append('\n')
    return ''.join(out)


def to_lxml(node):
    """A detached lxml copy of ``node`` and its subtree."""
    return etree.fromstring(serialize(node, pretty=False))


def materialize(node):
    """Give the whole tree of ``node`` lxml twins; return ``node``'s twin."""
    root = node
    while root.parent is not None:
        root = root.parent
    _pair(root, to_lxml(root))
    return node.lx


def _pair(node, lx):
    node.lx = lx
    for child, lx_child in zip(node.children, lx):
        _pair(child, lx_child)
