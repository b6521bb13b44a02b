"""The config drive: an ISO9660 image (label ``config-2``) with the metadata.

Built in-process with pycdlib (no genisoimage/mkisofs on the host) with Rock
Ridge 1.09 (Linux guests see the real lower-case names) and Joliet (Windows
guests). The layout is the OpenStack metadata format cloud-init and the test
guest read: ``openstack/<version>/meta_data.json``, ``user_data``,
``network_data.json`` and ``openstack/content/NNNN`` for injected files.
"""

import base64
import binascii
import io
import ipaddress
import json
import os
import re
import tempfile

from compute_agent import exception

VERSIONS = ('2012-08-10', 'latest')
LABEL = 'config-2'


PAD_TO = 64 * 1024
# The drive holds admin_pass (and user_data, keys): readable by its owner
# only. QEMU still reads it: libvirt's DAC driver (dynamic_ownership, on by
# default in qemu.conf) chowns a guest's disks to the QEMU user while it runs
# and gives them back afterwards; with dynamic_ownership off, the operator
# must make instances_path readable to QEMU by other means.
FILE_MODE = 0o600


def _get(instance, key, default=None):
    if isinstance(instance, dict):
        return instance.get(key, default)
    return getattr(instance, key, default)


def _b64(value, field):
    if isinstance(value, bytes):
        value = value.decode('ascii', 'replace')
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise exception.InvalidRequest(field, 'not valid base64') from None


def _files(injected_files):
    """Nova's ``[[path, b64]]`` pairs or ``[{"path", "contents"}]`` dicts."""
    out = []
    for i, item in enumerate(injected_files or ()):
        if isinstance(item, dict):
            path, contents = item.get('path'), item.get('contents')
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            path, contents = item
        else:
            raise exception.InvalidRequest('injected_files', f'item {i} malformed')
        if not isinstance(path, str) or not path:
            raise exception.InvalidRequest('injected_files', f'item {i} has no path')
        out.append((path, _b64(contents or '', 'injected_files')))
    return out


def meta_data(instance, files=(), admin_password=None, extra_md=None):
    """The ``meta_data.json`` dict, keys in the order guests may rely on."""
    md = {
        'uuid': _get(instance, 'uuid'),
        'name': _get(instance, 'name'),
        'hostname': _get(instance, 'hostname') or _get(instance, 'name'),
        'launch_index': _get(instance, 'launch_index', 0) or 0,
        'availability_zone': _get(instance, 'availability_zone'),
        'meta': dict(_get(instance, 'metadata') or {}),
    }
    key_data = _get(instance, 'key_data')
    if key_data:
        md['public_keys'] = {'default': key_data}
    if files:
        md['files'] = [{'path': path, 'content_path': f'/content/{i:04d}'}
                       for i, (path, _) in enumerate(files)]
    if admin_password:
        md['admin_pass'] = admin_password
    md.update(extra_md or {})
    return md


def network_data(network_info):
    """The ``network_data.json`` dict: links, IPv4 networks, DNS services."""
    links, networks, services = [], [], []
    for vif in network_info or ():
        net = vif.get('network') or {}
        link_id = vif.get('devname') or 'tap' + vif['id'][:11]
        links.append({
            'id': link_id,
            'type': 'phy' if vif.get('vnic_type') in ('direct', 'direct-physical') else 'vif',
            'ethernet_mac_address': vif.get('address'),
            'mtu': net.get('mtu'),
            'vif_id': vif['id'],
        })
        for subnet in net.get('subnets') or ():
            cidr = ipaddress.ip_network(subnet['cidr'], strict=False)
            for dns in subnet.get('dns') or ():
                entry = {'type': 'dns', 'address': dns}
                if entry not in services:
                    services.append(entry)
            if cidr.version != 4:
                continue
            gateway = subnet.get('gateway')
            routes = ([{'network': '0.0.0.0', 'netmask': '0.0.0.0', 'gateway': gateway}]
                      if gateway else [])
            for ip in subnet.get('ips') or ():
                networks.append({
                    'id': f'network{len(networks)}',
                    'type': 'ipv4',
                    'link': link_id,
                    'ip_address': ip['address'],
                    'netmask': str(cidr.netmask),
                    'routes': routes,
                    'network_id': net.get('id'),
                })
    return {'links': links, 'networks': networks, 'services': services}


def _dumps(obj):
    return json.dumps(obj, separators=(',', ':')).encode()


def _tree(instance, network_info, admin_password, injected_files, extra_md):
    """``{relative path: bytes}`` of every file on the drive."""
    files = _files(injected_files)
    content = {
        'meta_data.json': _dumps(meta_data(instance, files, admin_password, extra_md)),
        'network_data.json': _dumps(network_data(network_info)),
    }
    user_data = _get(instance, 'user_data')
    if user_data:
        content['user_data'] = _b64(user_data, 'instance.user_data')
    tree = {f'openstack/{v}/{name}': data
            for v in VERSIONS for name, data in content.items()}
    for i, (_, data) in enumerate(files):
        tree[f'openstack/content/{i:04d}'] = data
    return tree


def _d(name):
    return re.sub('[^A-Z0-9_]', '_', name.upper())


def _iso_name(path, is_file):
    """Strict ISO9660 (level 3) name: A-Z, 0-9, '_' and ``NAME.EXT;1``.

    Guests read the Rock Ridge / Joliet names, which keep the real spelling;
    the strict primary names only matter to readers that support neither.
    """
    *dirs, last = path.split('/')
    if is_file:
        stem, dot, ext = last.rpartition('.')
        last = f'{_d(stem)}.{_d(ext)};1' if dot else f'{_d(last)}.;1'
    else:
        last = _d(last)
    return '/' + '/'.join([_d(p) for p in dirs] + [last])


def _write_iso(tree, fp):
    import pycdlib      # ~1.6 MB: only agents that build config drives pay it
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge='1.09', vol_ident=LABEL)
    dirs = set()
    for p in tree:
        d = os.path.dirname(p)
        while d:
            dirs.add(d)
            d = os.path.dirname(d)
    for d in sorted(dirs):            # parents sort before their children
        iso.add_directory(_iso_name(d, False), rr_name=os.path.basename(d),
                          joliet_path='/' + d)
    for path, data in sorted(tree.items()):
        iso.add_fp(io.BytesIO(data), len(data), _iso_name(path, True),
                   rr_name=os.path.basename(path), joliet_path='/' + path)
    iso.write_fp(fp)
    iso.close()


def build_config_drive(path, instance, network_info, admin_password=None,
                       injected_files=(), extra_md=None):
    """Write the config drive ISO to ``path`` (via a temp name); returns path.

    ``instance`` is the instance object (docs: protocol-instance) (dict or
    attributes): uuid, name, hostname, metadata, key_data, user_data (base64).
    """
    tree = _tree(instance, network_info, admin_password, injected_files, extra_md)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.part',
                               prefix=f'.{os.path.basename(path)}.')
    try:
        with os.fdopen(fd, 'wb') as f:
            _write_iso(tree, f)
            # With cache=none QEMU opens disks O_DIRECT and refuses a raw disk
            # whose size is not a multiple of the host's block size ("Image
            # size is not a multiple of request alignment"); an ISO is only
            # 2 KiB-aligned. Zeros after the ISO's end are harmless.
            size = f.tell()
            if size % PAD_TO:
                f.truncate(size + PAD_TO - size % PAD_TO)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def read_kept(path):
    """What a rebuilt drive keeps of the drive at ``path``: ``(admin_pass,
    injected_files)`` (``[[path, base64]]``, as a spawn request gives them),
    ``(None, [])`` when there is no drive. Neither is ever logged."""
    import pycdlib
    if not os.path.exists(path):
        return None, []
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        def read(name):
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path='/' + name)
            return buf.getvalue()
        md = json.loads(read(f'openstack/{VERSIONS[-1]}/meta_data.json'))
        files = []
        for i, entry in enumerate(md.get('files') or ()):
            data = read(f'openstack/content/{i:04d}')
            files.append([entry['path'], base64.b64encode(data).decode('ascii')])
    finally:
        iso.close()
    return md.get('admin_pass'), files
