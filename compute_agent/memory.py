"""The process's C heap: fewer malloc arenas, free pages handed back.

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
"""

import ctypes
import ctypes.util
import logging
import os

LOG = logging.getLogger(__name__)

ARENA_MAX = 2
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
