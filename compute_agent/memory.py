"""The process's C heap: fewer malloc arenas, no per-thread caches, free
pages handed back.

glibc gives each thread that allocates an arena of its own (up to 8 per
CPU); the agent runs a dozen-odd threads (workers, periodic tasks,
libvirt's event loop, the committer) and each arena keeps pages that are
free but still resident. Measured on test:///default (bench/scale.py): two
arenas and a ``malloc_trim`` after bursts of work keep the agent ~1-2 MB
smaller idle and more after a thousand spawns, at no measurable cost in
call latency (the threads mostly wait; the GIL serializes Python anyway).

``MALLOC_ARENA_MAX`` in the environment (the systemd unit may set it) wins:
glibc reads it itself, so ``limit_arenas`` leaves it alone. On a C library
without these calls (musl) both functions do nothing.

glibc also keeps a cache per thread (tcache: up to 7 freed chunks of each
small size) that neither an arena cap nor ``malloc_trim`` reaches; across
the agent's ~20 threads it held 1.7 MB with 1,000 instances (bench/scale.py:
80.5 -> 78.7 MB; call latency and cast throughput in bench/rpc.py unchanged,
the threads mostly wait and the GIL serializes Python anyway). glibc reads
that setting only from ``GLIBC_TUNABLES`` as the process starts, so the
``compute-agent`` command execs itself once with it (``reexec_tuned``).
"""

import ctypes
import ctypes.util
import logging
import os
import sys

LOG = logging.getLogger(__name__)

ARENA_MAX = 2
TCACHE_OFF = 'glibc.malloc.tcache_count=0'
# Set across the re-exec: the GLIBC_TUNABLES the command was started with
# ('' for none), put back once glibc has read ours, for the agent's children.
_STARTED_WITH = 'COMPUTE_AGENT_GLIBC_TUNABLES'
_M_ARENA_MAX = -8      # mallopt parameter, from glibc's malloc.h

_libc = None


def _c_library():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6',
                                use_errno=True)
        except OSError:
            _libc = False
    return _libc


def limit_arenas(arenas=ARENA_MAX):
    """Cap glibc's malloc arenas (call before starting threads); returns
    whether the cap was set here."""
    if os.environ.get('MALLOC_ARENA_MAX'):
        return False
    libc = _c_library()
    mallopt = getattr(libc, 'mallopt', None) if libc else None
    if mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, int(arenas)))


def trim():
    """Hand free heap pages back to the kernel (``malloc_trim(0)``: every
    arena, not only the top of the main heap); well under a millisecond
    idle. Returns whether any memory was released."""
    libc = _c_library()
    malloc_trim = getattr(libc, 'malloc_trim', None) if libc else None
    if malloc_trim is None:
        return False
    return bool(malloc_trim(0))


def tuned_environ(environ):
    """``environ`` with glibc's per-thread caches off, or None when there is
    nothing to change: not glibc, or ``GLIBC_TUNABLES`` already sets
    tcache_count (an operator's value wins)."""
    try:
        glibc = (os.confstr('CS_GNU_LIBC_VERSION') or '').startswith('glibc')
    except (ValueError, OSError):
        glibc = False
    tunables = environ.get('GLIBC_TUNABLES', '')
    if not glibc or 'glibc.malloc.tcache_count' in tunables:
        return None
    return dict(environ, GLIBC_TUNABLES=':'.join(
        t for t in (tunables, TCACHE_OFF) if t))


def reexec_tuned():
    """Exec this interpreter again with the same command line in
    ``tuned_environ`` (same pid: systemd and a supervisor see one process).
    Call it first thing, before threads or files; returns when there is
    nothing to change, the exec fails, or in the process exec'd, with the
    environment given back as it was: the setting is for the agent's own
    threads; its children (qemu-img, mkswap...) start as they would have."""
    started_with = os.environ.pop(_STARTED_WITH, None)
    if started_with is not None:
        if started_with:
            os.environ['GLIBC_TUNABLES'] = started_with
        else:
            os.environ.pop('GLIBC_TUNABLES', None)
        return
    env = tuned_environ(os.environ)
    if env is None:
        return
    env[_STARTED_WITH] = os.environ.get('GLIBC_TUNABLES', '')
    try:
        os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
    except OSError as e:
        LOG.warning('Running with glibc\'s per-thread malloc caches: '
                    're-exec failed: %s', e)
