"""Element paths under a model object's element, on Nodes or lxml alike.

The small XPath subset ``xmlbase`` declarations use (``a/b/@c``): find,
create in the class's customary order, set and prune.
"""

from lxml import etree

from compute_agent.virt.xmlnode import Node


def split(path):
    """'a/b/@c' -> (('a', 'b'), 'c');  'a/b' -> (('a', 'b'), None)."""
    parts = [p for p in path.split('/') if p not in ('', '.')]
    attr = None
    if parts and parts[-1].startswith('@'):
        attr = parts.pop()[1:]
    return tuple(parts), attr


def find(node, steps, create=False, rank=None):
    for step in steps:
        child = node.find(step)
        if child is None:
            if not create:
                return None
            child = (Node(step) if node.__class__ is Node
                     else etree.SubElement(node, step))
            insert_ordered(node, child, rank)
        node = child
    return node


def insert_ordered(parent, child, rank):
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


def prune(node, stop):
    """Drop elements left empty by a removal, up to (not including) stop."""
    while node is not stop and node is not None:
        parent = node.getparent()
        if len(node) or node.attrib or (node.text or '').strip() or parent is None:
            return
        parent.remove(node)
        node = parent


def put(top, steps, attr, text, rank):
    """Set ``text`` at ``steps``/``attr`` under element ``top`` (created as
    needed, in ``rank`` order); no check of the text."""
    if top.__class__ is not Node:
        node = find(top, steps, True, rank) if steps else top
        if attr:
            node.set(attr, text)
        else:
            node.text = text
        return
    node = top
    for step in steps:      # _find inlined: the replay's hot loop
        for child in node.children:
            if child.tag == step:
                node = child
                break
        else:
            child = Node(step)
            if node.children:
                insert_ordered(node, child, rank)
            else:
                child.parent = node
                node.children.append(child)
            node = child
    if attr:
        node.attrib[attr] = text
    else:
        node.text = text
