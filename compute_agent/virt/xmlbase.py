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


def _split(path):
    """'a/b/@c' -> (['a', 'b'], 'c');  'a/b' -> (['a', 'b'], None)."""
    parts = [p for p in path.split('/') if p not in ('', '.')]
    attr = None
    if parts and parts[-1].startswith('@'):
        attr = parts.pop()[1:]
    return parts, attr


def _find(node, steps, create=False, order=()):
    for step in steps:
        child = node.find(step)
        if child is None:
            if not create:
                return None
            child = etree.Element(step)
            _insert_ordered(node, child, order)
        node = child
    return node


def _insert_ordered(parent, child, order):
    """Insert before the first sibling that ``order`` puts after ``child``.

    Keeps formatted XML in libvirt's customary order without the schema
    needing it (libvirt's grammar is mostly interleaved).
    """
    if child.tag in order:
        rank = order.index(child.tag)
        for i, sibling in enumerate(parent):
            if sibling.tag in order and order.index(sibling.tag) > rank:
                parent.insert(i, child)
                return
    parent.append(child)


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
        self.__doc__ = doc

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        node = _find(obj.node, self.steps)
        if node is None:
            return None
        text = node.get(self.attr) if self.attr else node.text
        return None if text is None else self.kind.from_xml(text)

    def __set__(self, obj, value):
        if value is None:
            node = _find(obj.node, self.steps)
            if node is None:
                return
            if self.attr:
                node.attrib.pop(self.attr, None)
            else:
                node.text = None
            _prune(node, obj.node)
            return
        node = _find(obj.node, self.steps, create=True, order=obj.ORDER)
        if self.attr:
            node.set(self.attr, self.kind.to_xml(value))
        else:
            node.text = self.kind.to_xml(value)


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
        return _find(obj.node, self.steps) is not None

    def __set__(self, obj, value):
        node = _find(obj.node, self.steps)
        if value and node is None:
            _find(obj.node, self.steps, create=True, order=obj.ORDER)
        elif not value and node is not None:
            parent = node.getparent()
            parent.remove(node)
            _prune(parent, obj.node)


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
        parent = _find(obj.node, self.steps)
        node = None if parent is None else parent.find(self.cls.TAG)
        return None if node is None else self.cls(node=node)

    def __set__(self, obj, value):
        parent = _find(obj.node, self.steps)
        old = None if parent is None else parent.find(self.cls.TAG)
        if old is not None:
            parent.remove(old)
        if value is not None:
            parent = _find(obj.node, self.steps, create=True, order=obj.ORDER)
            _insert_ordered(parent, value.node, obj.ORDER)
        elif parent is not None:
            _prune(parent, obj.node)


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
        parent = _find(obj.node, self.steps)
        if parent is None:
            return []
        return [self.cls(node=n) for n in parent.findall(self.cls.TAG)]

    def __set__(self, obj, values):
        parent = _find(obj.node, self.steps)
        if parent is not None:
            for n in parent.findall(self.cls.TAG):
                parent.remove(n)
        for value in values or ():
            self.append(obj, value)
        if not values and parent is not None:
            _prune(parent, obj.node)

    def append(self, obj, value):
        if not isinstance(value, self.cls):
            raise TypeError('%s takes %s, not %s' % (
                self.name, self.cls.__name__, type(value).__name__))
        parent = _find(obj.node, self.steps, create=True, order=obj.ORDER)
        parent.append(value.node)


class XMLObject:
    """Base of every model class: a view over one element named ``TAG``."""

    TAG = None
    ORDER = ()          # customary order of child elements

    def __init__(self, node=None, **values):
        self.node = node if node is not None else etree.Element(self.TAG)
        for name, value in values.items():
            if not isinstance(getattr(type(self), name, None),
                              (Prop, Flag, Child, Children)):
                raise AttributeError('%s has no XML property %r' % (
                    type(self).__name__, name))
            setattr(self, name, value)

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
        return copy.deepcopy(self.node)

    def to_xml(self, pretty=True):
        return etree.tostring(self.node, pretty_print=pretty, encoding='unicode')

    def add(self, name, child):
        """Append ``child`` to the Children property ``name``."""
        getattr(type(self), name).append(self, child)
        return child

    @classmethod
    def properties(cls):
        """Declared properties by name, base classes first."""
        props = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, (Prop, Flag, Child, Children)):
                    props[name] = value
        return props

    def canonical(self):
        return canonical(self.node)

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
