"""libvirt secrets for volume passwords (CHAP, ceph keys).

A password goes into a libvirt secret (``setValue``) and the disk XML names
the secret by its usage; so the password is never in a domain's XML, and
this module never logs it. A secret made here is private (libvirt never
reads it back to clients) and not ephemeral (it survives libvirtd restarts,
as the domains that use it do).

The usage name is derived from what identifies the credentials (portal,
target, user), so every volume behind the same credentials shares one
secret, and ``release`` deletes it only when no domain, running or defined,
refers to it any more.
"""

import hashlib
import logging
from xml.sax.saxutils import escape

import libvirt

from compute_agent.virt import config

LOG = logging.getLogger(__name__)

USAGE_PREFIX = 'compute-agent-'
_USAGE_TYPES = {'iscsi': libvirt.VIR_SECRET_USAGE_TYPE_ISCSI,
                'ceph': libvirt.VIR_SECRET_USAGE_TYPE_CEPH}


def usage_name(kind, *identity):
    """The usage id of the secret for these credentials (no password in it)."""
    digest = hashlib.sha256('\0'.join(identity).encode()).hexdigest()[:24]
    return '%s%s-%s' % (USAGE_PREFIX, kind, digest)


def _usage_xml(kind, usage):
    inner = ('<target>%s</target>' if kind == 'iscsi' else '<name>%s</name>') % escape(usage)
    return ("<secret ephemeral='no' private='yes'>"
            "<description>compute-agent volume credentials</description>"
            "<usage type='%s'>%s</usage></secret>" % (kind, inner))


def _lookup(conn, kind, usage):
    try:
        return conn.secretLookupByUsage(_USAGE_TYPES[kind], usage)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
            return None
        raise


def ensure(conn, kind, usage, value):
    """Define (or update) the secret ``usage`` holding ``value``."""
    secret = _lookup(conn, kind, usage) or conn.secretDefineXML(_usage_xml(kind, usage), 0)
    secret.setValue(value.encode() if isinstance(value, str) else value, 0)
    LOG.debug('libvirt secret %s (%s) holds the volume password', usage, kind)
    return secret.UUIDString()


def in_use(conn, usage):
    """True when any domain (live or defined XML) names secret ``usage``."""
    for dom in conn.listAllDomains(0):
        for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
            try:
                xml = dom.XMLDesc(flags)
            except libvirt.libvirtError:
                continue        # undefined meanwhile
            for disk in config.Domain.parse(xml).disks:
                if disk.auth_secret_usage == usage:
                    return True
    return False


def release(conn, kind, usage):
    """Delete secret ``usage`` unless a domain still refers to it."""
    secret = _lookup(conn, kind, usage)
    if secret is None or in_use(conn, usage):
        return False
    try:
        secret.undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
            raise
    LOG.debug('libvirt secret %s removed', usage)
    return True


def exists_uuid(conn, uuid):
    try:
        conn.secretLookupByUUIDString(uuid)
        return True
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
            return False
        raise
