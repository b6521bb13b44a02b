"""Declarative mapping between Python objects and libvirt XML.

Every model object is a thin view over an lxml element: properties read and
write the element directly, so parsing and formatting are one declaration,
and whatever the model does not describe (elements libvirt adds in
``virsh dumpxml``) survives a parse/edit/format cycle untouched.

Paths are a small subset of XPath relative to the object's element:
``@attr``, ``a/b``, ``a/b/@attr`` and ``.`` (the element's own text).
"""

import copy

from lxml import etree

from compute_agent.virt import xmlnode
from compute_agent.virt.xmlnode import Node

def _split(path):
    """'a/b/@c' -> (('a', 'b'), 'c');  'a/b' -> (('a', 'b'), None)."""
    parts = [p for p in path.split('/') if p not in ('', '.')]
    attr = None
    if parts and parts[-1].startswith('@'):
        attr = parts.pop()[1:]
    return tuple(parts), attr


def _el(obj):
    """The element an object views now: its Node, or that Node's lxml twin
    once its tree was materialized (the Node is then dead)."""
    node = obj._n
    if node.__class__ is Node and node.lx is not None:
        node = obj._n = node.lx
    return node


def _find(node, steps, create=False, rank=None):
    for step in steps:
        child = node.find(step)
        if child is None:
            if not create:
                return None
            child = (Node(step) if node.__class__ is Node
                     else etree.SubElement(node, step))
            _insert_ordered(node, child, rank)
        node = child
    return node


def _insert_ordered(parent, child, rank):
    """Insert before the first sibling that ``rank`` puts after ``child``.

    Keeps formatted XML in libvirt's customary order without the schema
    needing it (libvirt's grammar is mostly interleaved). ``rank`` maps a
    tag to its place in the class's ORDER.
    """
    mine = rank.get(child.tag) if rank else None
    if mine is not None:
        siblings = parent.children if parent.__class__ is Node else parent
        for i, sibling in enumerate(siblings):
            theirs = rank.get(sibling.tag)
            if theirs is not None and theirs > mine:
                parent.insert(i, child)
                return
    if child.getparent() is not parent:
        parent.append(child)


def _attach(obj, steps, value):
    """Parent element under ``obj`` (created) and ``value``'s element, of
    one kind: a Node tree and an lxml tree never mix."""
    parent = _find(_el(obj), steps, create=True, rank=obj._RANK)
    child = _el(value)
    if parent.__class__ is not child.__class__:
        if parent.__class__ is Node:
            parent = _find(obj.node, steps)
        else:
            child = value.node
    return parent, child


def _prune(node, stop):
    """Drop elements left empty by a removal, up to (not including) stop."""
    while node is not stop and node is not None:
        parent = node.getparent()
        if len(node) or node.attrib or (node.text or '').strip() or parent is None:
            return
        parent.remove(node)
        node = parent


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
        node = _el(obj)
        if self.steps:
            node = _find(node, self.steps)
            if node is None:
                return None
        text = node.get(self.attr) if self.attr else node.text
        return None if text is None else self.kind.from_xml(text)

    def __set__(self, obj, value):
        top = obj._n
        if top.__class__ is Node and top.lx is not None:
            top = _el(obj)
        if value is None:
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
        if top.__class__ is Node:
            # The builder's hot path: one loop, no lxml, no helper calls.
            if not text.isprintable():
                xmlnode.check(text)
            node = top
            for step in self.steps:
                for child in node.children:
                    if child.tag == step:
                        node = child
                        break
                else:
                    child = Node(step)
                    if node.children:
                        _insert_ordered(node, child, obj._RANK)
                    else:
                        child.parent = node
                        node.children.append(child)
                    node = child
            if self.attr:
                node.attrib[self.attr] = text
            else:
                node.text = text
            return
        node = _find(top, self.steps, True, obj._RANK) if self.steps else top
        if self.attr:
            node.set(self.attr, text)
        else:
            node.text = text


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
        return _find(_el(obj), self.steps) is not None

    def __set__(self, obj, value):
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
        parent = _find(_el(obj), self.steps)
        node = None if parent is None else parent.find(self.cls.TAG)
        return None if node is None else self.cls(node=node)

    def __set__(self, obj, value):
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
        if not isinstance(value, self.cls):
            raise TypeError('%s takes %s, not %s' % (
                self.name, self.cls.__name__, type(value).__name__))
        top, child = obj._n, value._n
        if (top.__class__ is Node and child.__class__ is Node
                and top.lx is None and child.lx is None):
            # The builder's path: two new trees, no lxml anywhere.
            _find(top, self.steps, True, obj._RANK).append(child)
            return
        parent, child = _attach(obj, self.steps, value)
        parent.append(child)


_PROPERTY_TYPES = (Prop, Flag, Child, Children)


class XMLObject:
    """Base of every model class: a view over one element named ``TAG``.

    An object made from scratch holds a pure-Python ``xmlnode.Node`` until
    something asks for ``node`` (an lxml element); a parsed one views the
    lxml element it was parsed into.
    """

    TAG = None
    ORDER = ()          # customary order of child elements
    _RANK = {}          # ORDER as {tag: index}, per class
    _PROPS = {}         # declared properties by name, per class

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._RANK = {tag: i for i, tag in enumerate(cls.ORDER)}
        props = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, _PROPERTY_TYPES):
                    props[name] = value
        cls._PROPS = props

    def __init__(self, node=None, **values):
        self._n = Node(self.TAG) if node is None else node
        props = self._PROPS
        for name, value in values.items():
            try:
                prop = props[name]
            except KeyError:
                raise AttributeError('%s has no XML property %r' % (
                    type(self).__name__, name)) from None
            prop.__set__(self, value)

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
        node = _el(self)
        if node.__class__ is Node:
            return xmlnode.to_lxml(node)
        return copy.deepcopy(node)

    def to_xml(self, pretty=True):
        node = _el(self)
        if node.__class__ is Node:
            return xmlnode.serialize(node, pretty)
        return etree.tostring(node, pretty_print=pretty, encoding='unicode')

    def add(self, name, child):
        """Append ``child`` to the Children property ``name``."""
        getattr(type(self), name).append(self, child)
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
