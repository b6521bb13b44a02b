"""The libvirt connection pool (virt/connection.py) on libvirt's test driver.

test:///default is shared by every connection of a process, so pooled
connections see the same mock host, as they see one libvirtd for real.
"""

import threading

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.virt import connection


def make(pool_size, uri='test:///default'):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], default_config_files=[])
    conf.set_override('connection_uri', uri, group='libvirt')
    conf.set_override('connection_pool_size', pool_size, group='libvirt')
    return connection.Connection(conf)


def hold(conn_pool, count):
    """``count`` calls parked inside ``fn`` at once; returns the connections
    they ran on and a function that releases them."""
    release, got, threads = threading.Event(), [], []
    arrived = threading.Barrier(count + 1)

    def fn(conn):
        got.append(conn)
        arrived.wait(10)
        release.wait(10)
    for _ in range(count):
        t = threading.Thread(target=conn_pool.call, args=(fn,))
        t.start()
        threads.append(t)
    arrived.wait(10)

    def done():
        release.set()
        for t in threads:
            t.join(10)
    return got, done


def test_idle_calls_use_the_primary():
    pool = make(3)
    try:
        assert pool.call(lambda c: c) is pool.get()
        assert pool.call(lambda c: c) is pool.get()
    finally:
        pool.close()


def test_busy_connections_are_not_queued_behind():
    pool = make(3)
    try:
        got, done = hold(pool, 3)
        try:
            assert len({id(c) for c in got}) == 3     # one call per connection
            # A fourth call runs at once on one of them (the least busy).
            assert pool.call(lambda c: c.getLibVersion()) > 0
        finally:
            done()
        # Connections stay open for reuse; objects from them stay usable.
        assert pool.call(lambda c: c) is pool.get()
        assert all(c.isAlive() for c in got)
    finally:
        pool.close()


def test_default_size_gives_every_concurrent_operation_a_connection():
    pool = make(0)
    try:
        assert len(pool._slots) == pool.conf.max_concurrent_builds + 2
        # Connections are opened when first needed, not up front.
        pool.call(lambda c: c)
        assert sum(s.conn is not None for s in pool._slots) == 1
    finally:
        pool.close()


def test_a_short_call_gets_an_idle_connection_when_there_is_one():
    pool = make(4)
    try:
        got, done = hold(pool, 3)       # three slow calls in flight
        try:
            short = pool.call(lambda c: c)
            assert all(short is not c for c in got)
        finally:
            done()
    finally:
        pool.close()


def test_pooled_connections_share_the_host():
    pool = make(2)
    try:
        got, done = hold(pool, 2)
        done()
        xml = ("<domain type='test'><name>pool-shared</name><memory>1024</memory>"
               "<os><type>hvm</type></os></domain>")
        dom = got[1].defineXML(xml)
        try:
            assert pool.call(lambda c: c.lookupByName('pool-shared').UUIDString()) \
                == dom.UUIDString()
        finally:
            dom.undefine()
    finally:
        pool.close()


@pytest.mark.parametrize('size', [1, 4])
def test_closed_pool_refuses_calls(size):
    pool = make(size)
    pool.call(lambda c: c.getLibVersion())
    pool.close()
    with pytest.raises(exception.HypervisorUnavailable, match="closed by the agent"):
        pool.call(lambda c: c.getLibVersion())


def test_file_backed_test_uri_uses_one_connection(tmp_path):
    # Each connection to a test:///<file> URI is its own mock host, so a pool
    # would split the agent's view of its guests.
    node = tmp_path / 'node.xml'
    node.write_text("<node><cpu><mhz>1000</mhz></cpu></node>")
    pool = make(4, 'test://%s' % node)
    try:
        got, done = hold(pool, 2)
        done()
        assert got[0] is got[1]
    finally:
        pool.close()
