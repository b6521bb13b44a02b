"""Validation of domain XML against libvirt's own RelaxNG schema."""

import copy
import functools
import os

from lxml import etree

from compute_agent import exception

SCHEMA_DIR = os.environ.get('LIBVIRT_SCHEMA_DIR', '/usr/share/libvirt/schemas')


@functools.lru_cache(maxsize=None)
def _relaxng(name):
    path = os.path.join(SCHEMA_DIR, name)
    try:
        return etree.RelaxNG(etree.parse(path))
    except OSError as e:
        raise exception.GuestXMLInvalid(
            reason='libvirt schema %s unreadable (package libvirt0 / '
                   'libvirt-daemon): %s' % (path, e)) from None


def validate_domain(node):
    """Raise GuestXMLInvalid unless ``node`` (a <domain> element) is valid.

    libvirt dropped its UML driver in 5.0 and its schema lost the ``uml`` os
    type; the seed's UML XML is otherwise the Xen PV shape, so it is checked
    as os type ``linux``.
    """
    if node.findtext('os/type') == 'uml':
        node = copy.deepcopy(node)
        node.find('os/type').text = 'linux'
    schema = _relaxng('domain.rng')
    if not schema.validate(node):
        errors = '; '.join('line %s: %s' % (e.line, e.message)
                           for e in schema.error_log)
        raise exception.GuestXMLInvalid(reason=errors)
