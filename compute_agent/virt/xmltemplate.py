"""Text templates for new model objects, so a guest is written without a tree.

A model object built from scratch records what was set on it, in order
(``xmlbase``: its *events*). Which elements, attributes and children that
gives, and in which order, depends only on the class, the names set and
their order, never on the values. So the first object of each shape is laid
out once, as ``xmlnode.Node``s holding placeholder values, written by
``xmlnode``'s own writer and cut at the placeholders into a ``%`` format;
every later object of that shape is one dict lookup and one format. The
text is therefore exactly what the Node tree of the same events would give.
"""

import operator
import re

from compute_agent.virt import xmlnode
from compute_agent.virt.xmlnode import Node

# Placeholders no caller's text holds: characters the setters refuse
# (xmlnode.check), so a value can never be mistaken for one.
_VALUE = '\x01%d\x02'
_CHILD = '\x03%d'
_CUT = re.compile('\x01(\\d+)\x02|<\x03(\\d+)/>')

ATTR, TEXT, CHILD = 0, 1, 2
OWN_ATTR = 3        # an attribute of the object's own element

# Layouts kept per class; more shapes than this means something builds
# objects in unbounded ways: start over rather than grow.
_MAX_SHAPES = 256


def _depths(node, depth, found):
    """Depth at which ``xmlnode._write`` writes each placeholder child of
    ``node`` (written at ``depth``)."""
    if depth is not None and node.text is None:
        depth += 1
    else:       # not pretty, or mixed content: libxml2 stops indenting
        depth = None
    for child in node.children:
        if child.tag[0] == '\x03':
            found[int(child.tag[1:])] = depth
        else:
            _depths(child, depth, found)


def _layout(obj, depth, apply):
    layouts = obj.__class__._LAYOUTS
    key = (tuple(obj._v), depth)
    layout = layouts.get(key)
    if layout is None:
        if len(layouts) >= _MAX_SHAPES:
            layouts.clear()
        layout = layouts[key] = compile(obj.__class__, key[0], depth, apply)
    return layout


def compile(cls, keys, depth, apply):
    """(format, slots, getter, mixed) writing an object of ``cls`` whose
    events are ``keys``, at ``depth`` (None: not pretty): ``getter`` when
    every slot is a value, else ``mixed`` = (values' getter, children's
    (slot index, key, depth)). ``apply(top, cls, items, child)`` lays
    events out on a Node, as ``xmlbase`` replays them."""
    kinds = {}
    items = []
    placeholders = []
    for i, key in enumerate(keys):
        kind = cls.event_kind(key)
        kinds[i] = kind
        items.append((key, _VALUE % i if kind != CHILD else i))
    top = Node(cls.TAG)

    def child(i, tag):
        node = Node(tag)
        placeholders.append((node, i))
        return node
    apply(top, cls, items, child)
    for node, i in placeholders:     # laid out by its real tag, cut by index
        node.tag = _CHILD % i
    found = {}
    _depths(top, depth, found)
    out = []
    xmlnode._write(top, out, [], depth)
    pieces = _CUT.split(''.join(out))
    fmt = [pieces[0].replace('%', '%%')]
    slots = []
    for j in range(1, len(pieces), 3):
        value, child_i, literal = pieces[j:j + 3]
        if value is not None:
            i = int(value)
            kind = kinds[i]
            if kind == ATTR and not cls._PROPS[keys[i]].steps:
                kind = OWN_ATTR
            slots.append((keys[i], kind, None))
        else:
            i = int(child_i)
            slots.append((keys[i], CHILD, found[i]))
        fmt.append(literal.replace('%', '%%'))
    names = [name for name, kind, _ in slots if kind != CHILD]
    get = _getter(names)
    if len(names) == len(slots):
        return '%s'.join(fmt), tuple(slots), get, None
    # Values and children: the values still in one C call, the children
    # put in at their places (ascending, so each index is final).
    kids = tuple((pos, name, child_depth)
                 for pos, (name, kind, child_depth) in enumerate(slots)
                 if kind == CHILD)
    return '%s'.join(fmt), tuple(slots), None, (get, kids)


def _getter(names):
    """``names``' values of an events dict, as a tuple, in one C call."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    if names:       # itemgetter of one key gives the value, not a 1-tuple
        return lambda events, name=names[0]: (events[name],)  # noqa: E731
    return lambda events: ()  # noqa: E731


def fill(obj, depth, values, apply):
    """The text of ``obj`` (events in ``obj._v``) at ``depth``; its values
    and its children's are appended to ``values`` for one escaping test."""
    events = obj._v
    layout = obj._LAYOUTS.get((tuple(events), depth))
    if layout is None:
        layout = _layout(obj, depth, apply)
    fmt, _, get, mixed = layout
    if get is not None:         # values only: fetched in one C call
        args = get(events)
        values.extend(args)
        return fmt % args
    get, kids = mixed
    args = list(get(events))
    values.extend(args)
    for pos, name, child_depth in kids:
        value = events[name]
        # A child without children of its own (most are) is written here:
        # a call less per device.
        child = value._v
        layout = value._LAYOUTS.get((tuple(child), child_depth))
        if layout is not None and layout[2] is not None:
            child = layout[2](child)
            values.extend(child)
            value = layout[0] % child
        else:
            value = fill(value, child_depth, values, apply)
        args.insert(pos, value)
    return fmt % tuple(args)


def fill_escaped(obj, depth, apply, ascii_top=False):
    """``fill`` with every value escaped (rare: most values need none);
    ``ascii_top``: lxml's quirk for a sub-element's own attributes."""
    events = obj._v
    fmt, slots, _, _ = _layout(obj, depth, apply)
    args = []
    for name, kind, child_depth in slots:
        value = events[name]
        if kind == CHILD:
            value = fill_escaped(value, child_depth, apply)
        elif kind == OWN_ATTR:
            value = xmlnode._escape_attr(value, ascii_top)
        elif kind == ATTR:
            value = xmlnode._escape_attr(value)
        else:
            value = xmlnode._escape_text(value)
        args.append(value)
    return fmt % tuple(args)


def _special(text):
    """Whether ``text`` holds a character to escape (in attributes, a
    superset of text's): seven substring tests take ~0.2 us for a guest's
    values, a regex class search ~4 us."""
    return ('"' in text or '&' in text or '<' in text or '>' in text
            or '\n' in text or '\r' in text or '\t' in text)


def serialize(obj, pretty, attached, apply):
    """What ``xmlnode.serialize`` writes for the Node tree of ``obj``."""
    depth = 0 if pretty else None
    values = []
    text = fill(obj, depth, values, apply)
    if attached:
        text = fill_escaped(obj, depth, apply, ascii_top=True)
    elif _special('\0'.join(values)):
        text = fill_escaped(obj, depth, apply)
    return text + '\n' if pretty else text
