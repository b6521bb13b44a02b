"""Declarative mapping between Python objects and libvirt XML.

Each model class declares where its values live (``Prop``, ``Flag``,
``Child``, ``Children``) as a small subset of XPath relative to its element:
``@attr``, ``a/b``, ``a/b/@attr`` and ``.`` (the element's own text). An
object is in one of two modes:

* **new** (``_v`` is its events): made from scratch, as the builder makes
  ~25 objects and ~80 values a guest and only wants the text. It holds no
  element, only what was set or added, in order; properties read the
  events and ``to_xml`` writes them through per-shape text templates
  (``xmltemplate``).
* **tree** (``_node``): a view over an element; properties read and write
  the element, so what the model does not describe (what libvirt adds in
  ``virsh dumpxml``) survives a parse/edit/format cycle. A parsed object is
  one from the start (lxml). A new object becomes one when something needs
  a tree (a removal, ``.node``, RelaxNG, an lxml part): the events of its
  whole tree are replayed into pure-Python ``xmlnode.Node``s
  (``_realize``), which become lxml elements when ``.node`` is asked for.

The replay does what the setters do on a tree, and each template is cut
from the text of such a replay, so both modes write the same bytes
(tests/unit/test_xmltemplate.py).
"""

import copy
import weakref

from lxml import etree

from compute_agent.virt import xmlnode
from compute_agent.virt import xmltemplate
from compute_agent.virt.xmlnode import Node
from compute_agent.virt.xmlpath import find as _find
from compute_agent.virt.xmlpath import insert_ordered as _insert_ordered
from compute_agent.virt.xmlpath import prune as _prune
from compute_agent.virt.xmlpath import put as _put
from compute_agent.virt.xmlpath import split as _split


class _Shared(dict):
    """The events of a shared object (``XMLObject.shared``): a setter on it
    fails instead of changing every guest that holds it."""

    REFUSED = ('a model object shared by many guests is read-only: copy() '
               'it to change it')

    def __setitem__(self, key, value):
        raise TypeError(self.REFUSED)


def _el(obj):
    """The element an object views now: its Node, or that Node's lxml twin
    once its tree was materialized (the Node is then dead)."""
    node = obj._n
    if node.__class__ is Node and node.lx is not None:
        node = obj._n = node.lx
    return node


def _attach(obj, steps, value):
    """Parent element under ``obj`` (created) and ``value``'s element, of
    one kind: a Node tree and an lxml tree never mix. A shared ``value``
    is laid out from a copy (other parents hold it)."""
    if value._v.__class__ is _Shared:
        value = value.copy()
    parent = _find(_el(obj), steps, create=True, rank=obj._RANK)
    child = _el(value)
    if parent.__class__ is not child.__class__:
        if parent.__class__ is Node:
            parent = _find(obj.node, steps)
        else:
            child = value.node
    return parent, child


class _Kind:
    """How a value is spelled in XML."""

    @staticmethod
    def to_xml(value):
        return str(value)

    @staticmethod
    def from_xml(text):
        return text


class Int(_Kind):
    @staticmethod
    def from_xml(text):
        return int(text)


class YesNo(_Kind):
    @staticmethod
    def to_xml(value):
        return 'yes' if value else 'no'

    @staticmethod
    def from_xml(text):
        return text == 'yes'


class OnOff(_Kind):
    @staticmethod
    def to_xml(value):
        return 'on' if value else 'off'

    @staticmethod
    def from_xml(text):
        return text == 'on'


class Prop:
    """A scalar at ``path``; ``None`` means absent."""

    def __init__(self, path, kind=_Kind, doc=None):
        self.path = path
        self.steps, self.attr = _split(path)
        self.kind = kind
        # A str needs no spelling for a plain kind (the builder's usual case).
        self.plain = kind is _Kind
        self.__doc__ = doc

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        events = obj._v
        if events is not None:
            text = events.get(self.name)
            return None if text is None else self.kind.from_xml(text)
        node = _el(obj)
        if self.steps:
            node = _find(node, self.steps)
            if node is None:
                return None
        text = node.get(self.attr) if self.attr else node.text
        return None if text is None else self.kind.from_xml(text)

    def __set__(self, obj, value):
        events = obj._v
        if value is None:
            if events is not None and _absent(obj, self):
                return
            top = _el(obj)
            node = _find(top, self.steps)
            if node is None:
                return
            if self.attr:
                node.attrib.pop(self.attr, None)
            else:
                node.text = None
            _prune(node, top)
            return
        if self.plain and value.__class__ is str:
            text = value
        else:
            text = self.kind.to_xml(value)
        if events is not None:
            # The builder's hot path: remember the text, checked now as
            # lxml would check it.
            if not text.isprintable():
                xmlnode.check(text)
            events[self.name] = text
            return
        top = _el(obj)
        if top.__class__ is Node and not text.isprintable():
            xmlnode.check(text)
        _put(top, self.steps, self.attr, text, obj._RANK)


class Flag:
    """An empty element whose presence means True (``<acpi/>``)."""

    def __init__(self, path, doc=None):
        self.steps, _ = _split(path)
        self.__doc__ = doc

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        if obj._v is not None:
            return self.name in obj._v
        return _find(_el(obj), self.steps) is not None

    def __set__(self, obj, value):
        events = obj._v
        if events is not None:
            if value:
                events[self.name] = True
                return
            if self.name not in events:
                return
        top = _el(obj)
        node = _find(top, self.steps)
        if value and node is None:
            _find(top, self.steps, create=True, rank=obj._RANK)
        elif not value and node is not None:
            parent = node.getparent()
            parent.remove(node)
            _prune(parent, top)


class Child:
    """One child object of class ``cls`` under ``parent`` (or None)."""

    def __init__(self, cls, parent='.'):
        self.cls = cls
        self.steps, _ = _split(parent)

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        if obj._v is not None:
            return obj._v.get(self.name)
        parent = _find(_el(obj), self.steps)
        node = None if parent is None else parent.find(self.cls.TAG)
        return None if node is None else self.cls(node=node)

    def __set__(self, obj, value):
        events = obj._v
        if events is not None and self.name not in events:
            if value is None:
                if _absent(obj, self):
                    return
            elif value._v is not None and value._p is None:
                events[self.name] = value
                if value._v.__class__ is not _Shared:
                    value._p = weakref.ref(obj)
                return
        parent = _find(_el(obj), self.steps)
        old = None if parent is None else parent.find(self.cls.TAG)
        if old is not None:
            parent.remove(old)
        if value is not None:
            parent, child = _attach(obj, self.steps, value)
            _insert_ordered(parent, child, obj._RANK)
        elif parent is not None:
            _prune(parent, _el(obj))


class Children:
    """All child objects of class ``cls`` under ``parent``, as a list.

    Append with ``XMLObject.add(name, child)``; assigning a list replaces
    them all.
    """

    def __init__(self, cls, parent='.'):
        self.cls = cls
        self.steps, _ = _split(parent)

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        events = obj._v
        if events is not None:
            name = self.name
            return [value for key, value in events.items()
                    if key.__class__ is tuple and key[0] == name]
        parent = _find(_el(obj), self.steps)
        if parent is None:
            return []
        return [self.cls(node=n) for n in parent.findall(self.cls.TAG)]

    def __set__(self, obj, values):
        parent = _find(_el(obj), self.steps)
        if parent is not None:
            for n in parent.findall(self.cls.TAG):
                parent.remove(n)
        for value in values or ():
            self.append(obj, value)
        if not values and parent is not None:
            _prune(parent, _el(obj))

    def append(self, obj, value):
        if value.__class__ is not self.cls and not isinstance(value, self.cls):
            raise TypeError('%s takes %s, not %s' % (
                self.name, self.cls.__name__, type(value).__name__))
        events = obj._v
        if events is not None and value._v is not None and value._p is None:
            # Two new objects: one more event (keys never repeat: events
            # only grow while lazy).
            events[(self.name, len(events))] = value
            if value._v.__class__ is not _Shared:
                value._p = weakref.ref(obj)
            return
        parent, child = _attach(obj, self.steps, value)
        parent.append(child)


_PROPERTY_TYPES = (Prop, Flag, Child, Children)


def _absent(obj, prop):
    """Whether setting ``prop`` (absent) to None leaves a lazy ``obj`` as it
    is. It would not if it pruned an element a text property left blank."""
    events = obj._v
    if prop.name in events:
        return False
    return not prop.steps or not any(
        name in events for name in obj._TWINS.get(prop.name, ()))


def _check_places(cls, props):
    """Refuse a class whose properties cannot be read from their own
    events: two writing one place, or one writing inside another's
    element."""
    places = {}
    for name, prop in props.items():
        if isinstance(prop, (Child, Children)):
            places[name] = prop.steps + (prop.cls.TAG,)
        else:
            places[name] = prop.steps
    seen = set()
    for name, prop in props.items():
        if isinstance(prop, Prop):
            if (prop.steps, prop.attr) in seen:
                raise TypeError('%s.%s: another property writes %s'
                                % (cls.__name__, name, prop.path))
            seen.add((prop.steps, prop.attr))
            continue
        mine = places[name]
        for other, place in places.items():
            if other != name and place[:len(mine)] == mine:
                raise TypeError('%s.%s writes inside %s\'s element'
                                % (cls.__name__, other, name))


def _apply(top, cls, items, child):
    """Lay out events (key, value) of a ``cls`` object on Node ``top`` as
    the setters would have; ``child(value, tag)`` gives a child's Node."""
    props, rank = cls._PROPS, cls._RANK
    for key, value in items:
        if key.__class__ is tuple:          # Children.append
            prop = props[key[0]]
            _find(top, prop.steps, True, rank).append(child(value, prop.cls.TAG))
            continue
        prop = props[key]
        kind = prop.__class__
        if kind is Prop:
            _put(top, prop.steps, prop.attr, value, rank)
        elif kind is Flag:
            _find(top, prop.steps, True, rank)
        else:                               # Child
            _insert_ordered(_find(top, prop.steps, True, rank),
                            child(value, prop.cls.TAG), rank)


def _replay(obj, tag=None):
    """Turn lazy ``obj`` and its children into Node trees; its Node. A
    shared child is laid out from a copy: other guests still hold it."""
    events = obj._v
    if events.__class__ is _Shared:
        if tag is None:
            raise TypeError(_Shared.REFUSED)
        return _replay(obj.copy(), tag)
    obj._v = obj._p = None
    top = obj._node = Node(obj.TAG)
    _apply(top, obj.__class__, events.items(), _replay)
    return top


def _realize(obj):
    """Replay the whole lazy tree ``obj`` belongs to (from its root, so
    parents and views stay one tree)."""
    root = obj
    while root._p is not None:
        parent = root._p()
        if parent is None:
            break
        root = parent
    dropped = root._p is not None
    _replay(root)
    if dropped:     # its parent object is gone: still a sub-element
        Node('detached').append(root._node)


class XMLObject:
    """Base of every model class: one element named ``TAG``, new or a tree
    (see the module docstring)."""

    TAG = None
    ORDER = ()          # customary order of child elements
    _RANK = {}          # ORDER as {tag: index}, per class
    _PROPS = {}         # declared properties by name, per class
    _TWINS = {}         # name: text properties at the same element
    _LAYOUTS = {}       # xmltemplate's layouts, per class
    _PLAIN = frozenset()    # names of plain-text properties, per class
    _LEAF = True        # no Child/Children properties
    _v = None           # events while lazy, else None
    _p = None           # weakref to the lazy parent once added to one
    _node = None        # the Node or lxml element once not lazy

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._RANK = {tag: i for i, tag in enumerate(cls.ORDER)}
        props = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, _PROPERTY_TYPES):
                    props[name] = value
        cls._PROPS = props
        cls._TWINS = {
            name: tuple(other for other, twin in props.items()
                        if other != name and isinstance(twin, Prop)
                        and twin.attr is None and twin.steps == prop.steps)
            for name, prop in props.items() if not isinstance(prop, Flag)}
        _check_places(cls, props)
        cls._PLAIN = frozenset(name for name, prop in props.items()
                               if isinstance(prop, Prop) and prop.plain)
        cls._LAYOUTS = {}
        cls._LEAF = not any(isinstance(prop, (Child, Children))
                            for prop in props.values())

    def __init__(self, node=None, **values):
        if node is None:
            # Usually every value is a printable str of a plain property:
            # then the keyword dict is the events as it is (all tests in C).
            if self._PLAIN.issuperset(values):
                try:
                    if ''.join(values.values()).isprintable():
                        self._v = values
                        return
                except TypeError:       # a None or an int
                    pass
            self._v = events = {}
            props = self._PROPS
            for name, value in values.items():
                prop = props.get(name)
                if (prop.__class__ is Prop and value is not None
                        and events is not None):
                    # Prop.__set__'s lazy path, inlined: the builder's
                    # hottest loop.
                    if prop.plain and value.__class__ is str:
                        text = value
                    else:
                        text = prop.kind.to_xml(value)
                    if not text.isprintable():
                        xmlnode.check(text)
                    events[name] = text
                elif prop is None:
                    raise AttributeError('%s has no XML property %r' % (
                        type(self).__name__, name))
                elif prop.__class__ is Flag and value and events is not None:
                    events[name] = True     # Flag.__set__'s lazy path
                else:
                    prop.__set__(self, value)
                    events = self._v    # None if that needed the tree
            return
        self._node = node
        props = self._PROPS
        for name, value in values.items():
            try:
                prop = props[name]
            except KeyError:
                raise AttributeError('%s has no XML property %r' % (
                    type(self).__name__, name)) from None
            prop.__set__(self, value)

    @property
    def _n(self):
        """The Node or lxml element (a lazy tree is replayed first)."""
        if self._v is not None:
            _realize(self)
        return self._node

    @_n.setter
    def _n(self, value):
        if self._v is not None:
            _realize(self)
        self._node = value

    @classmethod
    def event_kind(cls, key):
        """What an event writes: xmltemplate.ATTR, TEXT, CHILD or None."""
        if key.__class__ is tuple:
            return xmltemplate.CHILD
        prop = cls._PROPS[key]
        if prop.__class__ is Prop:
            return xmltemplate.ATTR if prop.attr else xmltemplate.TEXT
        return None if prop.__class__ is Flag else xmltemplate.CHILD

    @property
    def node(self):
        """The lxml element (made from the Node tree on first use)."""
        node = _el(self)
        if node.__class__ is Node:
            node = self._n = xmlnode.materialize(node)
        return node

    @node.setter
    def node(self, value):
        self._n = value

    @classmethod
    def parse(cls, xml):
        """Build from an XML string/bytes or an element (which is copied)."""
        if isinstance(xml, (str, bytes)):
            node = etree.fromstring(xml, etree.XMLParser(remove_blank_text=True))
        else:
            node = copy.deepcopy(xml)
        if node.tag != cls.TAG:
            raise ValueError('expected <%s>, got <%s>' % (cls.TAG, node.tag))
        return cls(node=node)

    def format(self):
        """A detached copy of the element."""
        if self._v is not None:
            return etree.fromstring(self.to_xml(pretty=False))
        node = _el(self)
        if node.__class__ is Node:
            return xmlnode.to_lxml(node)
        return copy.deepcopy(node)

    def to_xml(self, pretty=True):
        if self._v is not None:
            return xmltemplate.serialize(self, pretty, self._p is not None, _apply)
        node = _el(self)
        if node.__class__ is Node:
            return xmlnode.serialize(node, pretty)
        return etree.tostring(node, pretty_print=pretty, encoding='unicode')

    def copy(self, **values):
        """A new object like this one (not attached anywhere), ``values``
        set on top: a new object's events are copied, any other's text is
        parsed. The builder copies what every guest of a configuration
        shares rather than making it again."""
        events = self._v
        if events is None:
            twin = self.parse(self.format())
        elif self._LEAF and (not values or (
                self._PLAIN.issuperset(values)
                and ''.join(values.values()).isprintable())):
            # The usual case, as __init__'s first test: one dict.
            twin = object.__new__(self.__class__)
            twin._v = {**events, **values}
            return twin
        else:
            twin = object.__new__(self.__class__)
            twin._v = events = dict(events)
            for key, value in events.items():
                if value.__class__ is not str and value is not True:
                    child = events[key] = value.copy()      # a child object
                    child._p = weakref.ref(twin)
        for name, value in values.items():
            prop = self._PROPS.get(name)
            if prop is None:
                raise AttributeError('%s has no XML property %r' % (
                    type(self).__name__, name))
            prop.__set__(twin, value)
        return twin

    def shared(self):
        """A read-only twin of this new object that any number of parents
        may hold at once (none of them owns it), for what every guest of a
        configuration writes alike: no copy per guest. Setting a value on
        it, or asking for its tree, is a TypeError; a parent that becomes a
        tree lays it out from a copy."""
        events = self._v
        if events is None or any(
                v.__class__ is not str and v is not True for v in events.values()):
            raise TypeError('only a new object without children is shared')
        twin = object.__new__(self.__class__)
        twin._v = _Shared(events)
        return twin

    def add(self, name, child):
        """Append ``child`` to the Children property ``name``."""
        self._PROPS[name].append(self, child)
        return child

    @classmethod
    def properties(cls):
        """Declared properties by name, base classes first."""
        return dict(cls._PROPS)

    def canonical(self):
        return canonical(self.format())

    def __eq__(self, other):
        return type(self) is type(other) and self.canonical() == other.canonical()

    def __hash__(self):
        return hash(self.canonical())

    def __repr__(self):
        return '<%s %s>' % (type(self).__name__, self.to_xml(pretty=False))


def canonical(node):
    """Whitespace-insensitive C14N text of an element, for comparisons."""
    node = copy.deepcopy(node)
    for el in node.iter():
        if el.text is not None and not el.text.strip():
            el.text = None
        if el.tail is not None and not el.tail.strip():
            el.tail = None
    return etree.tostring(node, method='c14n2', strip_text=True)
