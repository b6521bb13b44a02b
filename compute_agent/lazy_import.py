"""Extension modules loaded on first use instead of at import time.

``lxml.etree`` (with libxml2/libxslt: ~4 MB of the process) is imported by
every module that builds or reads XML, but an idle agent never touches it;
it is needed once an operation builds a domain or a filter. Python's
``importlib.util.LazyLoader`` cannot defer an extension module (its
``create_module`` already runs the whole initialisation), so ``defer``
puts a stand-in module in ``sys.modules``: ``from lxml import etree``
binds the stand-in, and the first attribute looked up on it imports the
real module and copies its namespace into the stand-in, so later lookups
are plain module attribute lookups, as fast as on the real module.

Only the service calls ``defer`` (cmd/agent.py), before it imports the
modules that use XML; tools and tests import the real module as usual.

``not_installed`` keeps optional packages a library would import eagerly
but the agent never uses out of the process (rpc/transport.py: kombu's
yaml and msgpack serializers).
"""

import contextlib
import importlib
import sys
import threading
import types

_lock = threading.RLock()   # re-entered if the import itself looks it up


class _Deferred(types.ModuleType):

    def __getattr__(self, attr):
        # Only reached for names not (yet) in the namespace.
        real = _load(self)
        try:
            return getattr(real, attr)
        except AttributeError:
            raise AttributeError('module %r has no attribute %r'
                                 % (self.__name__, attr)) from None


def _load(stub):
    with _lock:
        real = stub.__dict__.get('_deferred_real')
        if real is None:
            name = stub.__name__
            if sys.modules.get(name) is stub:
                del sys.modules[name]
            try:
                real = importlib.import_module(name)
            except BaseException:
                sys.modules.setdefault(name, stub)
                raise
            stub.__dict__.update(real.__dict__)
            stub.__dict__['_deferred_real'] = real
        return real


def defer(name):
    """Make ``import name`` cheap until the module is first used; a module
    already imported (or deferred) is left as it is. Returns the stand-in,
    or the module already there."""
    with _lock:
        if name in sys.modules:
            return sys.modules[name]
        stub = _Deferred(name)
        sys.modules[name] = stub
        return stub


def loaded(name):
    """Whether ``name`` is really imported (not just a stand-in)."""
    module = sys.modules.get(name)
    if module is None:
        return False
    return not isinstance(module, _Deferred) or \
        '_deferred_real' in module.__dict__


@contextlib.contextmanager
def not_installed(*names):
    """Within the block, ``import name`` fails as if ``name`` were not
    installed (for a library that imports optional packages eagerly and
    copes without them); a module already imported is left as it is, and
    later imports find the package again."""
    with _lock:
        hidden = [name for name in names if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None     # the import system's "not found"
    try:
        yield
    finally:
        with _lock:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
