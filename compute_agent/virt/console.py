"""The guest's console log: bounded on disk, read back newest first.

A guest can write to its serial port as fast as it likes, so the log must
not be a plain file the agent lets grow (nova called that a security bug and
moved to virtlogd). The builder gives kvm/qemu guests a pty serial with
libvirt's ``<log file=... append='on'/>``: virtlogd writes it, rotates it at
its ``max_size`` into ``console.log.0``, ``.1``, ... and keeps
``max_backups`` of them. The bound on disk is therefore virtlogd's, which
the agent reads at start and trims to ``[libvirt] console_log_max_bytes``
by removing rotated files beyond it. Appending keeps the log across reboots
and re-defines (rescue, hard reboot).
"""

import logging
import os
import re

from compute_agent import exception

LOG = logging.getLogger(__name__)

CONSOLE_LOG = 'console.log'
TAIL_BYTES = 1 << 20            # enough for any sane tail_lines
# libvirt's defaults when virtlogd.conf does not set them.
VIRTLOGD_MAX_SIZE = 2 * 1024 * 1024
VIRTLOGD_MAX_BACKUPS = 3
_SETTING = re.compile(r'^\s*(max_size|max_backups)\s*=\s*(\d+)\s*(?:#.*)?$')


def virtlogd_limits(path):
    """``(max_size, max_backups)`` virtlogd uses, from its config file."""
    found = {'max_size': VIRTLOGD_MAX_SIZE, 'max_backups': VIRTLOGD_MAX_BACKUPS}
    try:
        with open(path) as f:
            for line in f:
                m = _SETTING.match(line)
                if m:
                    found[m.group(1)] = int(m.group(2))
    except FileNotFoundError:
        pass
    return found['max_size'], found['max_backups']


def backups_allowed(conf):
    """How many rotated files fit beside the live one in the byte bound.

    Raises ``ConfigError`` when no rotation keeps the log under the bound:
    virtlogd's rollover is off, or one file may already exceed it.
    """
    bound = conf.libvirt.console_log_max_bytes
    max_size, max_backups = virtlogd_limits(conf.libvirt.virtlogd_conf)
    if max_size <= 0 or max_size > bound:
        raise exception.ConfigError(
            group='libvirt', option='console_log_max_bytes',
            reason='%d bytes cannot hold a console log: virtlogd (%s) '
                   'rotates at max_size = %d' % (bound, conf.libvirt.virtlogd_conf,
                                                 max_size))
    keep = min(max_backups, bound // max_size - 1)
    if keep < max_backups:
        LOG.warning('virtlogd keeps %d rotated console logs of %d bytes; the '
                    'agent keeps %d so each guest stays under '
                    '[libvirt] console_log_max_bytes = %d',
                    max_backups, max_size, keep, bound)
    return keep


def pruning(conf):
    """Rotated files the agent must keep, or None when virtlogd keeps no
    more than that itself (then nothing needs listing or removing)."""
    keep = backups_allowed(conf)
    return keep if keep < virtlogd_limits(conf.libvirt.virtlogd_conf)[1] else None


def _rotated(inst_dir):
    """Rotated files, newest first (``console.log.0`` is the newest)."""
    found = []
    try:
        names = os.listdir(inst_dir)
    except FileNotFoundError:
        return []
    for name in names:
        suffix = name[len(CONSOLE_LOG) + 1:]
        if name.startswith(CONSOLE_LOG + '.') and suffix.isdigit():
            found.append((int(suffix), name))
    return [os.path.join(inst_dir, name) for _, name in sorted(found)]


def prune(inst_dir, keep):
    """Remove rotated files beyond the ``keep`` newest; returns how many."""
    removed = 0
    for path in _rotated(inst_dir)[keep:]:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _read_end(path, limit):
    try:
        with open(path, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - limit))
            return f.read()
    except FileNotFoundError:
        return b''


def tail(inst_dir, lines):
    """The last ``lines`` lines of the console, across a rotation.

    Reads at most ``TAIL_BYTES`` from the live log and, when that holds too
    few lines, from the newest rotated file before it. Carriage returns from
    the serial line are dropped.
    """
    if lines <= 0:
        return ''
    data = _read_end(os.path.join(inst_dir, CONSOLE_LOG), TAIL_BYTES)
    rotated = _rotated(inst_dir)
    if data.count(b'\n') <= lines and len(data) < TAIL_BYTES and rotated:
        data = _read_end(rotated[0], TAIL_BYTES - len(data)) + data
    text = data.decode('utf-8', 'replace').replace('\r', '')
    out = text.splitlines()[-lines:]
    return '\n'.join(out) + ('\n' if out and text.endswith('\n') else '')
