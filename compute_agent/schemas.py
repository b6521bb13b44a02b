"""The request schemas (docs: protocol-methods, protocol-objects), declared as data.

JSON Schema (Draft 2020-12) for the ``args`` of every method, the format
checks they use and the limits behind them; ``validation`` applies them.
Names, ids and addresses follow the rules of ``compute_agent.rules`` (each
defined there once); a volume's ``driver_volume_type`` is only shaped here,
the installed volume driver plugins decide which ones exist.

Conventions the schemas rely on:

* ``integer`` means a JSON integer: ``true`` and ``1.0`` are not integers.
* ``pattern`` has ECMA-262 semantics, as JSON Schema says: ``$`` matches only
  at the very end (Python's ``$`` would also match before a final newline, so
  ``"vm\\n"`` would pass as an instance name).
* Unknown keys are ignored inside objects (``instance``, ``image_meta``, a
  VIF, ...), as the docs (protocol-objects) say for ``instance``; unknown top-level
  arguments are errors.
* ``x-reason`` (our own keyword) is the reason reported for any failure of
  the schema it sits in; otherwise the reason is derived from the keyword.
  ``x-normalize: lower`` lower-cases a valid string; ``default`` is filled
  in when the key is absent.
"""

import base64
import binascii
import ipaddress
import os.path
import re
import urllib.parse

from compute_agent import rules


INT_MAX = 2 ** 31 - 1   # sizes and counts end up in C ints / libvirt XML
UUID_RE = rules.UUID.pattern
MAX_ITEMS = 64          # VIFs, disks, files, addresses... in one request
DISK_FORMATS = ('qcow2', 'raw', 'iso', 'ami', 'aki', 'ari')
#: Volume types whose ``data`` has a shape here; any other installed volume
#: driver plugin checks its own ``data``.
VOLUME_DATA_SHAPES = ('local', 'iscsi', 'rbd', 'nfs', 'nbd')
SECRET_FIELDS = frozenset({'admin_password', 'rescue_password', 'auth_password'})


# -- format checkers --------------------------------------------------------
# Each returns True for a non-string (the "type" keyword reports that) and
# for a value of the right shape; only a well-typed bad value is a failure.

FORMATS = {}            # format name -> check(value) -> bool
FORMAT_REASONS = {}


def _format(name, reason):
    def register(func):
        def check(value):
            if not isinstance(value, str):
                return True
            try:
                return bool(func(value))
            except (ValueError, TypeError, UnicodeError, binascii.Error):
                return False
        FORMATS[name] = check
        FORMAT_REASONS[name] = reason
        return func
    return register


def _no_controls(value):
    return not any(ord(c) < 32 or ord(c) == 127 for c in value)


@_format('ip-address', 'must be an IP address')
def _is_ip(value):
    if '%' in value or not _no_controls(value):  # no scoped IPv6 addresses
        return False
    ipaddress.ip_address(value)
    return True


@_format('cidr', 'must be a network in CIDR notation (address/prefix)')
def _is_cidr(value):
    if '/' not in value or '%' in value or not _no_controls(value):
        return False
    ipaddress.ip_network(value, strict=True)
    return True


_LABEL = re.compile(r'[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z')


@_format('hostname', 'must be a host name (RFC 1123)')
def _is_hostname(value):
    return (0 < len(value) <= 253 and
            all(_LABEL.match(label) for label in value.split('.')))


def _is_host(value):
    """A host name, an IPv4 address or a bracketed IPv6 address."""
    if value.startswith('[') and value.endswith(']'):
        return isinstance(ipaddress.ip_address(value[1:-1]), ipaddress.IPv6Address) \
            and '%' not in value
    return _is_hostname(value)   # also matches dotted-quad IPv4 addresses


@_format('host', 'must be a host name or an IP address')
def _is_host_or_ip(value):
    try:
        return _is_ip(value)
    except ValueError:
        return _is_hostname(value)


@_format('host-port', 'must be host:port (port 1-65535; IPv6 in brackets)')
def _is_host_port(value):
    host, sep, port = value.rpartition(':')
    return (sep == ':' and re.fullmatch(r'[0-9]{1,5}', port) is not None and
            1 <= int(port) <= 65535 and _is_host(host))


@_format('port', 'must be a port number 1-65535')
def _is_port(value):
    return re.fullmatch(r'[0-9]{1,5}', value) is not None and 1 <= int(value) <= 65535


def _is_abs_path(value):
    return (value.startswith('/') and len(value) <= 4096 and
            _no_controls(value) and '..' not in value.split('/') and
            os.path.normpath(value) == value)


@_format('abs-path', 'must be a normalized absolute path without ".."')
def _check_abs_path(value):
    return _is_abs_path(value)


@_format('nfs-export', 'must be host:/path')
def _is_nfs_export(value):
    if value.startswith('['):
        host, sep, path = value.partition(']:')
        host, sep = host + ']', sep and ':'
    else:
        host, sep, path = value.partition(':')
    return sep == ':' and _is_host(host) and _is_abs_path(path)


@_format('unicast-mac', 'must not be a multicast or all-zero MAC address')
def _is_unicast_mac(value):
    # a value of the wrong shape passes here: "pattern" reports that
    return not rules.MAC.regex.search(value) or rules.MAC.extra(value) is None


@_format('base64', 'must be base64-encoded')
def _is_base64(value):
    base64.b64decode(''.join(value.split()), validate=True)
    return True


@_format('url', 'must be an absolute URL')
def _is_url(value):
    if not _no_controls(value) or ' ' in value:
        return False
    parts = urllib.parse.urlsplit(value)
    return bool(re.fullmatch(r'[A-Za-z][A-Za-z0-9+.-]*', parts.scheme)) and \
        bool(parts.netloc or parts.path)


# -- the schemas ------------------------------------------------------------

def _int(minimum=0, maximum=INT_MAX, nullable=False, **extra):
    return dict({'type': ['integer', 'null'] if nullable else 'integer',
                 'minimum': minimum, 'maximum': maximum}, **extra)


def _str(pattern=None, nullable=False, **extra):
    schema = {'type': ['string', 'null'] if nullable else 'string'}
    if pattern:
        schema['pattern'] = pattern
    schema.update(extra)
    return schema


def _text(max_length, nullable=False, **extra):
    """Free-form text without control characters (it may end up in XML)."""
    return _str(r'^[^\x00-\x1f\x7f]*$', nullable=nullable, maxLength=max_length,
                **{'x-reason': 'must be %stext without control characters, at most %d characters'
                   % ('null or ' if nullable else '', max_length)}, **extra)


def _obj(properties, required=(), nullable=False, **extra):
    schema = {'type': ['object', 'null'] if nullable else 'object',
              'properties': properties}
    if required:
        schema['required'] = list(required)
    schema.update(extra)
    return schema


def _list(items, **extra):
    # Bounds (maxItems) before items: a list far too long fails at once.
    return dict({'type': 'array'}, **extra, items=items)


def _ref(name):
    return {'$ref': '#/$defs/' + name}


def _volume_branch(kind):
    return {'if': {'properties': {'driver_volume_type': {'const': kind}},
                   'required': ['driver_volume_type']},
            'then': {'properties': {'data': _ref('volume_data_' + kind)}}}


def _image_meta(nullable=False):
    return _obj({
        'id': _ref('image_id'),
        'disk_format': {'type': ['string', 'null'], 'enum': list(DISK_FORMATS) + [None],
                        'default': None},
        'checksum': rules.CHECKSUM.schema(nullable=True, default=None),
        'size': _int(nullable=True, maximum=2 ** 63 - 1, default=None),
        'location': _str(nullable=True, format='url', maxLength=2048, default=None),
        'properties': {'type': 'object', 'default': {}},
    }, required=['id'], nullable=nullable)


DEFS = {
    'uuid': rules.UUID.schema(**{'x-normalize': 'lower', 'x-reason': rules.UUID.reason}),
    'image_id': rules.IMAGE_ID.schema(),
    'image_id_or_null': rules.IMAGE_ID.schema(nullable=True, default=None),
    'device_name': rules.DEVICE_PATH.schema(),
    'ifname': rules.IFNAME.schema(),
    'ip': _str(format='ip-address'),
    'password': {'type': ['string', 'null'], 'maxLength': 255, 'default': None,
                 'x-reason': 'must be a string of at most 255 characters or null'},
    'instance': _obj({
        'uuid': _ref('uuid'),
        'name': rules.INSTANCE_NAME.schema(),
        'flavor': _ref('flavor'),
        'image_ref': _ref('image_id_or_null'),
        'kernel_id': _ref('image_id_or_null'),
        'ramdisk_id': _ref('image_id_or_null'),
        'config_drive': {'type': 'boolean', 'default': False},
        'user_data': _str(nullable=True, format='base64', maxLength=65535,
                          default=None),
        'metadata': {'type': 'object', 'default': {},
                     'propertyNames': {'minLength': 1, 'maxLength': 255,
                                       'x-reason': 'keys must be 1-255 characters'},
                     'additionalProperties': _str(maxLength=255)},
        'hostname': _str(nullable=True, format='hostname', default=None),
        'key_data': _str(nullable=True, maxLength=65535, default=None),
    }, required=['uuid', 'name', 'flavor']),
    'flavor': _obj({
        'memory_mb': _int(minimum=1),
        'vcpus': _int(minimum=1),
        'root_gb': _int(),
        'ephemeral_gb': _int(default=0),
        'swap': _int(default=0),
    }, required=['memory_mb', 'vcpus', 'root_gb']),
    'image_meta': _image_meta(),
    'vif': _obj({
        'id': rules.VIF_ID.schema(),
        'address': rules.MAC.schema(format='unicast-mac', **{'x-normalize': 'lower'}),
        'type': rules.PLUGIN_NAME.schema(),
        'devname': _ref('ifname'),
        'network': _obj({
            'id': _text(255, nullable=True),
            'bridge': rules.IFNAME.schema(nullable=True),
            'label': _text(255, nullable=True),
            'mtu': _int(minimum=rules.MTU_MIN, maximum=rules.MTU_MAX, nullable=True),
            'subnets': _list(_obj({
                'cidr': _str(format='cidr'),
                'gateway': _str(nullable=True, format='ip-address'),
                'ips': _list(_obj({'address': _ref('ip')}, required=['address']),
                             default=[], maxItems=MAX_ITEMS),
                'dns': _list(_ref('ip'), default=[], maxItems=MAX_ITEMS),
            }, required=['cidr']), default=[], maxItems=MAX_ITEMS),
        }),
        'details': {'type': 'object', 'default': {}},
        'filter': _ref('vif_filter'),
    }, required=['id', 'address', 'type']),
    # docs: protocol-vif-filter; cross-field checks in compute_agent.netfilter.spec.
    'vif_filter': _obj({
        'anti_spoofing': {'type': 'boolean', 'default': True},
        'rules': _ref('security_rules'),
    }, nullable=True),
    'security_rules': {'type': ['array', 'null'], 'default': None,
                       'items': _ref('security_rule'), 'maxItems': MAX_ITEMS},
    'security_rule': _obj({
        'direction': {'type': 'string', 'enum': ['ingress', 'egress']},
        'ethertype': {'type': 'string', 'enum': ['IPv4', 'IPv6'],
                      'default': 'IPv4'},
        'protocol': {'type': ['string', 'null'],
                     'enum': ['tcp', 'udp', 'icmp', None], 'default': None},
        'port_range_min': _int(minimum=1, maximum=65535, nullable=True,
                               default=None),
        'port_range_max': _int(minimum=1, maximum=65535, nullable=True,
                               default=None),
        'remote_ip_prefix': _str(nullable=True, format='cidr', default=None),
    }, required=['direction']),
    'network_info': _list(_ref('vif'), default=[], maxItems=MAX_ITEMS),
    'block_device_info': _obj({
        'root_device_name': rules.DEVICE_PATH.schema(nullable=True, default=None),
        'ephemerals': _list(_obj({
            'num': _int(),
            'device_name': _ref('device_name'),
            'size': _int(),
        }, required=['num', 'device_name', 'size']), default=[],
            maxItems=MAX_ITEMS),
        'swap': _obj({
            'device_name': _ref('device_name'),
            'swap_size': _int(minimum=1),
        }, required=['device_name', 'swap_size'], nullable=True, default=None),
        'block_device_mapping': _list(_obj({
            'mount_device': _ref('device_name'),
            'volume_id': _ref('volume_id'),
            'connection_info': _ref('connection_info'),
        }, required=['mount_device', 'connection_info']), default=[],
            maxItems=MAX_ITEMS),
    }, nullable=True, default=None),
    'volume_id': rules.VOLUME_ID.schema(),
    'volume_ref': rules.VOLUME_REF.schema(),
    'connection_info': _obj({
        # Which types exist is the installed plugins' business (validation
        # asks them); here only the name's shape.
        'driver_volume_type': rules.PLUGIN_NAME.schema(),
        'data': {'type': 'object'},
    }, required=['driver_volume_type', 'data'],
        allOf=[_volume_branch(kind) for kind in VOLUME_DATA_SHAPES]),
    'volume_data_nbd': _obj({
        'host': _str(format='host'),
        'port': {'type': ['string', 'integer'], 'format': 'port',
                 'minimum': 1, 'maximum': 65535,
                 'x-reason': 'must be a port number 1-65535'},
        'socket': _str(format='abs-path', maxLength=107),
        'export': _text(255, nullable=True),
    }, oneOf=[{'required': ['host', 'port'], 'not': {'required': ['socket']}},
              {'required': ['socket'], 'not': {'anyOf': [{'required': ['host']},
                                                         {'required': ['port']}]}}],
        **{'x-reason': 'must be an object with host and port, or with socket'}),
    'volume_data_local': _obj({'device_path': _str(format='abs-path')},
                              required=['device_path']),
    'volume_data_iscsi': _obj({
        'target_portal': _str(format='host-port'),
        'target_iqn': _str(r'^(iqn\.[0-9]{4}-[0-9]{2}\.[!-~]{1,200}'
                           r'|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$'),
        'target_lun': _int(maximum=16383, default=0),
        'auth_method': _text(32, nullable=True),
        'auth_username': _text(255, nullable=True),
        'auth_password': _ref('password'),
        'secret_uuid': {'type': ['string', 'null'], 'pattern': UUID_RE,
                        'x-normalize': 'lower',
                        'x-reason': 'must be a UUID string or null'},
        'secret_usage': _text(255, nullable=True),
    }, required=['target_portal', 'target_iqn']),
    'volume_data_rbd': _obj({
        'name': _str(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}/'
                     r'[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
        'hosts': _list(_str(format='host'), default=[], maxItems=MAX_ITEMS),
        'ports': _list({'type': ['string', 'integer'], 'format': 'port',
                        'minimum': 1, 'maximum': 65535,
                        'x-reason': 'must be a port number 1-65535'}, default=[],
                       maxItems=MAX_ITEMS),
        'auth_enabled': {'type': 'boolean'},
        'auth_username': _str(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$', nullable=True),
        'secret_uuid': {'type': ['string', 'null'], 'pattern': UUID_RE,
                        'x-normalize': 'lower',
                        'x-reason': 'must be a UUID string or null'},
        'secret_usage': _text(255, nullable=True),
    }, required=['name']),
    # docs: protocol-volumes-1-1: {"host", "port"} or {"socket"}, plus "export".
    'volume_data_nfs': _obj({
        'export': _str(format='nfs-export'),
        'name': _str(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$'),
        'options': _str(r'^[A-Za-z0-9_=,.:/-]*$', nullable=True, maxLength=1024),
    }, required=['export', 'name']),
    'injected_file': {
        'type': 'array', 'minItems': 2, 'maxItems': 2,
        'prefixItems': [_str(format='abs-path'),
                        _str(format='base64', maxLength=65535)],
        'x-reason': 'must be a [path, base64 contents] pair',
    },
}

# method -> {arg: schema}; an arg with a "default" is optional.
# Only spawn needs the whole instance: every later operation works from the
# record the agent kept, so there ``instance`` needs just its uuid (other
# keys, when sent, are still type-checked).
DEFS['instance_ref'] = dict(DEFS['instance'], required=['uuid'])
_INSTANCE = {'instance': _ref('instance_ref')}
# A host name (the [DEFAULT] host of an agent): it becomes a routing key.
HOST_RE = r'^[^\x00-\x1f\x7f*#]{1,255}$'
_PEER_ARGS = {'instance_uuid': _ref('uuid'), 'migration': {'type': 'object'}}
ARGS = {
    'spawn': dict(instance=_ref('instance'), image_meta=_ref('image_meta'),
                  network_info=_ref('network_info'),
                  block_device_info=_ref('block_device_info'),
                  admin_password=_ref('password'),
                  injected_files=_list(_ref('injected_file'), default=[],
                                       maxItems=MAX_ITEMS)),
    'rescue': dict(_INSTANCE, rescue_image_meta=dict(_image_meta(nullable=True),
                                                     default=None),
                   rescue_password=_ref('password')),
    'unrescue': dict(_INSTANCE),
    'reboot': dict(_INSTANCE, reboot_type={'type': 'string',
                                           'enum': ['SOFT', 'HARD'],
                                           'default': 'SOFT'}),
    'power_off': dict(_INSTANCE, timeout=_int(maximum=86400, default=60)),
    'power_on': dict(_INSTANCE),
    'pause': dict(_INSTANCE),
    'unpause': dict(_INSTANCE),
    'suspend': dict(_INSTANCE),
    'resume': dict(_INSTANCE),
    'destroy': dict(_INSTANCE, network_info=_ref('network_info'),
                    block_device_info=_ref('block_device_info'),
                    cleanup={'type': 'boolean', 'default': True}),
    'update_security_rules': {'instance_uuid': _ref('uuid'),
                              'vif_id': _str(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$'),
                              'rules': {'type': ['array', 'null'],
                                        'items': _ref('security_rule')}},
    'attach_volume': {'instance_uuid': _ref('uuid'), 'volume_id': _ref('volume_id'),
                      'connection_info': _ref('connection_info'),
                      'mountpoint': rules.DEVICE_PATH.schema(nullable=True,
                                                             default=None)},
    'detach_volume': {'instance_uuid': _ref('uuid'), 'volume_id': _ref('volume_ref')},
    'attach_interface': {'instance_uuid': _ref('uuid'), 'vif': _ref('vif')},
    'detach_interface': {'instance_uuid': _ref('uuid'),
                         'vif_id': _str(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$')},
    # 1.1 rebuild (docs: protocol-method-rebuild); admin_password is a
    # secret (SECRET_FIELDS, log.SECRET_KEYS).
    'rebuild': {'instance_uuid': _ref('uuid'), 'image_meta': _ref('image_meta'),
                'admin_password': _ref('password'),
                'preserve_ephemeral': {'type': 'boolean', 'default': False}},
    # 1.1 snapshot (docs: protocol-method-snapshot)
    'snapshot': {'instance_uuid': _ref('uuid'), 'image_id': _ref('image_id'),
                 'disk_format': {'type': 'string', 'enum': ['qcow2', 'raw'],
                                 'default': 'qcow2'},
                 'quiesce': {'type': ['boolean', 'null'], 'default': None}},
    # -- resize (1.1): the flavor as in the instance object
    'resize': {'instance_uuid': _ref('uuid'), 'flavor': _ref('flavor')},
    'confirm_resize': {'instance_uuid': _ref('uuid')},
    'revert_resize': {'instance_uuid': _ref('uuid')},
    # -- end of resize
    # -- guest agent (issue 15) --
    # The password goes to the guest as one chpasswd line: no control
    # characters (a newline would start another user's line).
    'set_admin_password': {
        'instance_uuid': _ref('uuid'),
        'admin_password': {'type': 'string', 'minLength': 1, 'maxLength': 255,
                           'pattern': '^[^\\u0000-\\u001f\\u007f]*$',
                           'x-reason': 'must be a string of 1 to 255 characters '
                                       'without control characters'},
        'user': rules.USER_NAME.schema(default='root')},
    # -- end of guest agent --
    # -- live migration (docs: protocol-method-live-migrate) -------------------
    'live_migrate': {'instance_uuid': _ref('uuid'),
                     'dest_host': _str(HOST_RE, **{
                         'x-reason': 'must be a host name: 1-255 characters, '
                                     'no control characters, no * or #'}),
                     'block_migration': {'type': 'boolean', 'default': False}},
    'live_migrate_abort': {'instance_uuid': _ref('uuid')},
    # Between agents (the migration handshake): their own business.
    '_migration_check': _PEER_ARGS,
    '_migration_prepare': _PEER_ARGS,
    '_migration_take_over': _PEER_ARGS,
    '_migration_rollback': _PEER_ARGS,
    '_migration_status': _PEER_ARGS,        # settling a crash (migration_settle)
    # -- end of live migration ----------------------------------------------------
    # -- cold migration (docs: protocol-method-migrate) --
    'migrate': {'instance_uuid': _ref('uuid'),
                'dest_host': _str(HOST_RE, **{
                    'x-reason': 'must be a host name: 1-255 characters, '
                                'no control characters, no * or #'}),
                'flavor': {'oneOf': [{'type': 'null'}, _ref('flavor')],
                           'default': None}},
    '_cold_migration_receive': _PEER_ARGS,
    '_cold_migration_drop': _PEER_ARGS,
    '_cold_migration_restore': _PEER_ARGS,
    # -- end of cold migration --
    'get_info': {'instance_uuid': _ref('uuid')},
    'list_instances': {},
    'get_console_output': {'instance_uuid': _ref('uuid'),
                           'tail_lines': _int(minimum=1, maximum=10000,
                                              default=100)},
    'get_vnc_console': {'instance_uuid': _ref('uuid')},
    'get_host_stats': {},
    'ping': {},
}

METHODS = tuple(ARGS)


def _method_schema(args):
    def resolve(schema):
        while '$ref' in schema:
            schema = DEFS[schema['$ref'].rsplit('/', 1)[1]]
        return schema
    return {
        '$schema': 'https://json-schema.org/draft/2020-12/schema',
        '$defs': DEFS,
        'type': 'object',
        'properties': args,
        'required': [name for name, schema in args.items()
                     if 'default' not in resolve(schema)],
        'additionalProperties': False,
    }


SCHEMAS = {method: _method_schema(args) for method, args in ARGS.items()}
