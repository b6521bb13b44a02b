"""The agent's memory helpers: deferred extension modules, the C heap."""

import os
import subprocess
import sys

from compute_agent import memory

DEFERRED = r'''
import sys
from compute_agent import lazy_import
stub = lazy_import.defer('lxml.etree')
from lxml import etree
assert etree is stub and not lazy_import.loaded('lxml.etree')
assert 'libxml2' not in open('/proc/self/maps').read()
node = etree.fromstring('<a><b x="1"/></a>')        # the first use loads it
assert lazy_import.loaded('lxml.etree')
real = sys.modules['lxml.etree']
assert real is not stub and etree.tostring is real.tostring
assert isinstance(node, etree._Element) and node.find('b').get('x') == '1'
from lxml import etree as again
assert again is real and lazy_import.defer('lxml.etree') is real
try:
    etree.no_such_name
except AttributeError as e:
    assert 'no_such_name' in str(e)
else:
    raise AssertionError('no AttributeError')
print('ok')
'''


def test_deferred_module_loads_on_first_use():
    """In a fresh interpreter: nothing of libxml2 is mapped until the first
    attribute of the deferred module is used; then the stand-in behaves as
    the real module and later imports get the real one."""
    out = subprocess.run([sys.executable, '-c', DEFERRED], check=True,
                         capture_output=True, text=True)
    assert out.stdout.strip() == 'ok'


def test_defer_leaves_an_imported_module_alone():
    from compute_agent import lazy_import
    assert lazy_import.defer('json') is sys.modules['json']
    assert lazy_import.loaded('json')


def test_malloc_helpers_run(monkeypatch):
    assert memory.trim() in (True, False)
    monkeypatch.setenv('MALLOC_ARENA_MAX', '4')
    assert memory.limit_arenas() is False     # the environment wins
    monkeypatch.delenv('MALLOC_ARENA_MAX')
    assert memory.limit_arenas(8) in (True, False)


def test_compiled_schema_released_when_idle():
    """The compiled domain schema is reused while plans come and dropped
    once unused for the idle time; the next plan compiles it again."""
    from compute_agent.virt import schema
    first = schema._relaxng('domain.rng')
    assert schema._relaxng('domain.rng') is first
    assert schema.release_idle(3600) == 0
    assert schema._relaxng('domain.rng') is first
    assert schema.release_idle(0) >= 1
    again = schema._relaxng('domain.rng')
    assert again is not first
    assert again.validate(schema.etree.fromstring(
        '<domain type="qemu"><name>x</name><memory>1</memory><os>'
        '<type>hvm</type></os></domain>'))


KOMBU_CODECS = r'''
import sys
from compute_agent.rpc import transport  # noqa: F401
import kombu.serialization as ser
from kombu.exceptions import SerializerNotInstalled
assert 'yaml' not in sys.modules and 'msgpack' not in sys.modules
for name in ('yaml', 'msgpack'):
    try:
        ser.dumps({'a': 1}, serializer=name)
    except SerializerNotInstalled:
        pass
    else:
        raise AssertionError(name + ' encoder loaded')
assert ser.dumps({'a': 1}) == ('application/json', 'utf-8', '{"a": 1}')
import yaml                 # the package itself is still there for others
assert yaml.safe_load('a: 1') == {'a': 1}
print('ok')
'''


def test_transport_keeps_kombu_yaml_and_msgpack_out():
    """In a fresh interpreter: loading the broker transport does not import
    yaml or msgpack (kombu registers them as not installed), JSON still
    encodes, and a later ``import yaml`` works."""
    out = subprocess.run([sys.executable, '-c', KOMBU_CODECS], check=True,
                         capture_output=True, text=True)
    assert out.stdout.strip() == 'ok'


def test_not_installed_hides_only_for_the_block():
    from compute_agent import lazy_import
    name = 'compute_agent_no_such_module_test'
    with lazy_import.not_installed(name, 'json'):
        assert sys.modules[name] is None
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise AssertionError('import succeeded')
        import json                 # already imported: left alone
        assert json.dumps(1) == '1'
    assert name not in sys.modules
    assert sys.modules['json'] is not None


REEXEC = r'''
import ctypes, os
print('pid', os.getpid(), flush=True)
from compute_agent import memory
memory.reexec_tuned()
print('environ', os.environ.get('GLIBC_TUNABLES'))
# 100 small chunks freed: with per-thread caches on, glibc keeps some of
# them in this thread's cache instead of its fastbins.
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
        'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc.mallinfo2.restype = Info
chunks = [libc.malloc(24) for _ in range(100)]
before = libc.mallinfo2().fsmblks
for c in chunks:
    libc.free(c)
print('fastbins', libc.mallinfo2().fsmblks - before)
'''


def _run_reexec(**env):
    environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    environ.update(env)
    out = subprocess.run([sys.executable, '-c', REEXEC], check=True,
                         capture_output=True, text=True, env=environ)
    said = [line.split(' ', 1) for line in out.stdout.splitlines()]
    pids = [v for k, v in said if k == 'pid']
    (environ,) = [v for k, v in said if k == 'environ']
    (fastbins,) = [int(v) for k, v in said if k == 'fastbins']
    return pids, environ, fastbins


def test_reexec_turns_the_thread_caches_off_once_in_the_same_process():
    """The command line runs again, in the same pid, with tcache_count=0
    added to the tunables it was started with: freed small chunks all go
    to the fastbins, none stays in a thread cache. Its children get the
    tunables it was started with back."""
    cached = _run_reexec(GLIBC_TUNABLES='glibc.malloc.tcache_count=7')[2]
    for started, given_back in (
            ('glibc.malloc.trim_threshold=131072',
             'glibc.malloc.trim_threshold=131072'),
            (None, 'None')):
        env = {'GLIBC_TUNABLES': started} if started else {}
        pids, environ, fastbins = _run_reexec(**env)
        assert len(pids) == 2 and pids[0] == pids[1]
        assert environ == given_back
        assert fastbins > cached


def test_reexec_leaves_an_operators_tcache_setting_alone():
    pids, environ, _ = _run_reexec(
        GLIBC_TUNABLES='glibc.malloc.tcache_count=3')
    assert len(pids) == 1 and environ == 'glibc.malloc.tcache_count=3'
    assert memory.tuned_environ(
        {'GLIBC_TUNABLES': 'glibc.malloc.tcache_count=7'}) is None
