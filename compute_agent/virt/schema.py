"""Validation of domain XML against libvirt's own RelaxNG schema."""

import copy
import os
import threading
import time

from lxml import etree

from compute_agent import exception

SCHEMA_DIR = os.environ.get('LIBVIRT_SCHEMA_DIR', '/usr/share/libvirt/schemas')


# Compiled schemas stay while plans come, and go once none has used them for
# KEEP_IDLE s (``release_idle``, from the service's periodic probe): the
# compiled domain.rng holds ~4 MB of libxml2 memory, which an idle agent
# should not keep to save the 10 ms of compiling it again.
KEEP_IDLE = 60.0
_compiled = {}            # file name -> [RelaxNG, monotonic time last used]
_lock = threading.Lock()


def _relaxng(name):
    with _lock:
        entry = _compiled.get(name)
        if entry is None:
            entry = _compiled[name] = [_compile(name), 0.0]
        entry[1] = time.monotonic()
        return entry[0]


def _compile(name):
    path = os.path.join(SCHEMA_DIR, name)
    try:
        return etree.RelaxNG(etree.parse(path))
    except OSError as e:
        raise exception.GuestXMLInvalid(
            reason='libvirt schema %s unreadable (package libvirt0 / '
                   'libvirt-daemon): %s' % (path, e)) from None


def release_idle(max_idle=KEEP_IDLE):
    """Forget compiled schemas no plan used for ``max_idle`` s; returns how
    many (their memory goes back with the next ``memory.trim``)."""
    cutoff = time.monotonic() - max_idle
    with _lock:
        idle = [n for n, (_, used) in _compiled.items() if used <= cutoff]
        for name in idle:
            del _compiled[name]
    return len(idle)


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
