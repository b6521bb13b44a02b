"""rpc/frames.py: the consume loop's frame reader, against byte streams.

The socket here is a fake that returns chosen chunks (a real broker cannot
be made to split frames where a test wants); the functional RPC tests run
the same reader against RabbitMQ.
"""

import socket
import struct

import amqp
import pytest

from compute_agent.rpc import frames


def frame(kind, channel, payload):
    return struct.pack('>BHI', kind, channel, len(payload)) + payload + b'\xce'


def shortstr(text):
    return bytes([len(text)]) + text.encode()


def deliver(tag, body, channel=1, ctag='ctag', redelivered=False,
            body_frames=1):
    method = (b'\x00\x3c\x00\x3c' + shortstr(ctag)
              + struct.pack('>QB', tag, int(redelivered))
              + shortstr('ex') + shortstr('rk'))
    header = struct.pack('>HHQH', 60, 0, len(body), 0)
    out = frame(1, channel, method) + frame(2, channel, header)
    step = max(1, -(-len(body) // body_frames))
    for i in range(0, len(body), step):
        out += frame(3, channel, body[i:i + step])
    return out


HEARTBEAT = frame(8, 0, b'')
CONFIRM = frame(1, 2, b'\x00\x3c\x00\x50' + struct.pack('>QB', 7, 0))


class TCPTransport:     # the name FrameReader.attach checks
    def __init__(self, chunks):
        self._read_buffer = b''
        self.sock = self
        self._chunks = list(chunks)

    def recv(self, n):
        if not self._chunks:
            raise BlockingIOError()
        chunk = self._chunks.pop(0)
        if len(chunk) > n:
            self._chunks.insert(0, chunk[n:])
        return chunk[:n]


class Channel:
    def __init__(self):
        self.callbacks = {}


class Connection:
    def __init__(self, chunks):
        self.transport = TCPTransport(chunks)
        self.channels = {1: Channel()}
        self.bytes_recv = 0
        self.generic = []      # frames left to py-amqp
        self.delivered = []
        self.channels[1].callbacks['ctag'] = self.delivered.append

    def on_inbound_frame(self, frame):
        self.generic.append(frame)


def drain_all(conn, budget=1000):
    reader = frames.FrameReader.attach(conn)
    while True:
        try:
            if not reader.drain(budget):
                return
        except socket.timeout:
            return


def split(data, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(data[i:i + n])
        i += n
    return out + ([data[i:]] if data[i:] else [])


STREAM = deliver(1, b'{"a": 1}') + HEARTBEAT + deliver(
    2, b'x' * 300, redelivered=True, body_frames=3) + CONFIRM + deliver(
    3, b'')


@pytest.mark.parametrize('sizes', [
    [len(STREAM)],                    # all in one read
    [1] * len(STREAM),                # a byte at a time
    [7, 8, 9, 100, 3],                # across frame headers and bodies
    [len(deliver(1, b'{"a": 1}')) - 1],   # a delivery but its last byte
])
def test_deliveries_and_other_frames_in_order(sizes):
    conn = Connection(split(STREAM, sizes))
    drain_all(conn)
    assert [(m.delivery_tag, m.body, m.delivery_info['redelivered'])
            for m in conn.delivered] == [
        (1, b'{"a": 1}', False), (2, b'x' * 300, True), (3, b'', False)]
    assert conn.delivered[0].delivery_info['routing_key'] == 'rk'
    # Heartbeat and confirm go to py-amqp, whole, as its reader gives them.
    assert conn.generic == [(8, 0, b''), (1, 2, CONFIRM[7:-1])]
    assert conn.transport._read_buffer == b''


def test_partial_frame_stays_in_py_amqps_buffer():
    data = deliver(1, b'{}') + deliver(2, b'{}')
    conn = Connection([data[:-3]])
    drain_all(conn)
    assert [m.delivery_tag for m in conn.delivered] == [1]
    # py-amqp's own synchronous reads continue from exactly here.
    assert conn.transport._read_buffer == deliver(2, b'{}')[:-3]


@pytest.mark.parametrize('case,data', [
    ('larger than frames._WHOLE_MAX: py-amqp assembles it',
     deliver(1, b'y' * (frames._WHOLE_MAX + 1), body_frames=4)),
    ('no consumer of that tag: py-amqp rejects it',
     deliver(1, b'{}', ctag='other')),
    ('header on another channel: not a delivery to build here',
     deliver(1, b'{}')[:32] + frame(2, 3, struct.pack('>HHQH', 60, 0, 2, 0))),
])
def test_left_to_py_amqp(case, data):
    conn = Connection([data])
    drain_all(conn)
    assert conn.delivered == []
    assert b''.join(frame(*f) for f in conn.generic) == data, case


def test_budget_leaves_frames_for_the_next_turn():
    conn = Connection([deliver(1, b'{}') + deliver(2, b'{}')])
    reader = frames.FrameReader.attach(conn)
    assert reader.drain(1) is True
    assert [m.delivery_tag for m in conn.delivered] == [1]
    with pytest.raises(socket.timeout):
        reader.drain(10)
    assert [m.delivery_tag for m in conn.delivered] == [1, 2]


def test_counts_frames_for_heartbeat_checks():
    conn = Connection([deliver(1, b'abc', body_frames=3)])
    drain_all(conn)
    assert conn.bytes_recv == 5     # method, header, three bodies


def test_bad_frame_end_is_a_connection_error():
    bad = deliver(1, b'{}')[:-1] + b'\x00'
    conn = Connection([bad])
    with pytest.raises(amqp.exceptions.UnexpectedFrame):
        frames.FrameReader.attach(conn).drain(10)


def test_closed_socket_is_a_connection_error():
    conn = Connection([b''])
    with pytest.raises(OSError):
        frames.FrameReader.attach(conn).drain(10)


def test_a_failing_callback_does_not_see_its_delivery_again():
    conn = Connection([deliver(1, b'{}') + deliver(2, b'{}')])
    boom = []

    def fail(message):
        boom.append(message.delivery_tag)
        raise RuntimeError('bug')
    conn.channels[1].callbacks['ctag'] = fail
    reader = frames.FrameReader.attach(conn)
    with pytest.raises(RuntimeError):
        reader.drain(10)
    conn.channels[1].callbacks['ctag'] = conn.delivered.append
    with pytest.raises(socket.timeout):
        reader.drain(10)
    assert boom == [1] and [m.delivery_tag for m in conn.delivered] == [2]


def test_other_transports_keep_py_amqps_reader():
    conn = Connection([])
    conn.transport.__class__ = type('SSLTransport', (TCPTransport,), {})
    assert frames.FrameReader.attach(conn) is None
