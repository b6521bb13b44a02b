"""The consume loop's frame reader: deliveries parsed in one pass.

py-amqp handles every frame alike: a context manager and three exact-size
reads per frame, a generic argument decoder, a partial-message object and
a channel dispatch table per delivery. On a burst of casts that was ~40 % of
the consume thread's CPU, more than the agent's own work. This reader takes
what the socket holds in one recv(), and for each ``basic.deliver`` whose
header and body frames follow it in the buffer builds the delivery with a
few ``struct`` calls and hands it to the consumer's callback. Every other
frame (confirms, returns, cancels, heartbeats, closes, and deliveries not
yet complete or too large to wait for) goes to py-amqp's own handler, whole
frame by whole frame, so py-amqp keeps its state and behaviour.

Bytes read but not yet handled live in py-amqp's own read buffer whenever
control leaves this module, so py-amqp's synchronous reads (basic_cancel's
wait for cancel-ok at stop) continue exactly where this reader stopped.
"""

import socket
import struct

import amqp

_FRAME = struct.Struct('>BHI')       # type, channel, payload size
_DELIVER = b'\x00\x3c\x00\x3c'       # basic.deliver: class 60, method 60
_DELIVERY_TAG = struct.Struct('>QB')  # delivery tag, bit flags
_BODY_SIZE = struct.Struct('>Q')     # in the content header, after class/weight
_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_END = 0xCE
# A delivery larger than this is left to py-amqp, which assembles it frame
# by frame: waiting for it whole would copy the growing buffer at each read.
_WHOLE_MAX = 1 << 16
_RECV = 1 << 16


class Delivery:
    """What the server's callback reads of a message."""

    __slots__ = ('body', 'delivery_tag', 'delivery_info')

    def __init__(self, body, delivery_tag, delivery_info):
        self.body = body
        self.delivery_tag = delivery_tag
        self.delivery_info = delivery_info


class FrameReader:
    """Reads one py-amqp connection's socket; see the module doc."""

    def __init__(self, amqp_conn):
        self._conn = amqp_conn
        self._transport = amqp_conn.transport

    @classmethod
    def attach(cls, amqp_conn):
        """A reader for ``amqp_conn``, or None where py-amqp is not the one
        this was written against (TLS, another reader): py-amqp reads then."""
        transport = amqp_conn.transport
        if type(transport).__name__ != 'TCPTransport' or not isinstance(
                getattr(transport, '_read_buffer', None), bytes):
            return None
        return cls(amqp_conn)

    def drain(self, budget):
        """Handle every frame the socket (non-blocking) holds, up to
        ``budget`` deliveries or frames. True when the budget ran out, with
        frames maybe left; raises ``socket.timeout`` when none is left,
        like py-amqp's reads."""
        transport = self._transport
        while True:
            try:
                data = transport.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                data = None
            else:
                if not data:
                    raise OSError('Server unexpectedly closed connection')
                transport._read_buffer += data
            budget = self._handle(budget)
            if budget <= 0:
                return True
            if data is None:
                raise socket.timeout()

    def _handle(self, budget):
        """Handle the complete frames in py-amqp's buffer, leaving the rest
        there. Returns the budget left."""
        transport = self._transport
        buf = transport._read_buffer
        pos, end = 0, len(buf)
        while budget > 0:
            frame = _frame(buf, pos, end)
            if frame is None:
                break                # incomplete: wait for more bytes
            kind, channel, start, after = frame
            budget -= 1
            if kind == _METHOD and buf[start:start + 4] == _DELIVER:
                done = self._deliver(buf, start, after, end, channel)
                if done is None:
                    break            # its content is not all here yet
                if done:
                    pos = done
                    continue
            # py-amqp's: handed over with the rest in py-amqp's buffer,
            # where a synchronous read in its handler would look.
            transport._read_buffer = buf[after:]
            self._conn.on_inbound_frame((kind, channel, buf[start:after - 1]))
            buf = transport._read_buffer
            pos, end = 0, len(buf)
        transport._read_buffer = buf[pos:] if pos else buf
        return budget

    def _deliver(self, buf, at, after, end, channel_id):
        """Hand the ``basic.deliver`` whose arguments start at ``at`` to its
        consumer. The offset after its last frame; None when frames are
        still to come; 0 when py-amqp should take it."""
        at += 4
        n = buf[at]
        consumer_tag = buf[at + 1:at + 1 + n].decode()
        at += 1 + n
        delivery_tag, bits = _DELIVERY_TAG.unpack_from(buf, at)
        at += 9
        n = buf[at]
        exchange = buf[at + 1:at + 1 + n].decode()
        at += 1 + n
        n = buf[at]
        routing_key = buf[at + 1:at + 1 + n].decode()
        # The content header, then body frames, on the same channel.
        frame = _frame(buf, after, end)
        if frame is None:
            return None
        kind, channel, start, after = frame
        if kind != _HEADER or channel != channel_id or after - start < 13:
            return 0
        (body_size,) = _BODY_SIZE.unpack_from(buf, start + 4)
        if body_size > _WHOLE_MAX:
            return 0
        frames, parts, got = 2, [], 0
        while got < body_size:
            frame = _frame(buf, after, end)
            if frame is None:
                return None
            kind, channel, start, after = frame
            if kind != _BODY or channel != channel_id:
                return 0
            parts.append(buf[start:after - 1])
            got += after - 1 - start
            frames += 1
        channel = self._conn.channels.get(channel_id)
        callback = channel and channel.callbacks.get(consumer_tag)
        if callback is None:
            return 0                 # py-amqp rejects it, and says so
        self._conn.bytes_recv += frames
        body = parts[0] if len(parts) == 1 else b''.join(parts)
        try:
            callback(Delivery(body, delivery_tag, {
                'consumer_tag': consumer_tag, 'delivery_tag': delivery_tag,
                'redelivered': bool(bits & 1), 'exchange': exchange,
                'routing_key': routing_key}))
        except BaseException:
            self._transport._read_buffer = buf[after:]  # it was handled
            raise
        return after


def _frame(buf, pos, end):
    """(type, channel, payload offset, offset after) of the frame at
    ``pos``, or None while it is incomplete."""
    if end - pos < 8:
        return None
    kind, channel, size = _FRAME.unpack_from(buf, pos)
    last = pos + 7 + size
    if last >= end:
        return None
    if buf[last] != _FRAME_END:
        raise amqp.exceptions.UnexpectedFrame(
            'Received frame_end %#04x while expecting 0xce' % buf[last])
    return kind, channel, pos + 7, last + 1
