"""The consume loop's I/O: wait on the socket or a wake-up, read frames.

Workers must be able to wake the consume thread the moment they finish (a
call's reply should not wait for a poll timeout), and py-amqp can only
block on its own socket. So the loop select()s on the socket and a pipe;
``Waker.wake`` writes to the pipe. Frames are then read non-blocking until
none is left, py-amqp's internal buffer included, which is what makes
select() on the socket alone safe afterwards.
"""

import os
import select
import socket

DRAIN_BUDGET = 600  # frames per turn before the loop looks at completions


class Waker:

    def __init__(self):
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending = False

    def wake(self):
        """Any thread: make the next (or current) wait return at once."""
        if self._pending:
            return  # a byte is already waiting to be read
        self._pending = True
        try:
            os.write(self._w, b'x')
        except BlockingIOError:
            pass

    def wait(self, sock, timeout):
        """Block until ``sock`` is readable, a wake-up or ``timeout`` s;
        return whether ``sock`` is readable."""
        r, _, _ = select.select([sock, self._r], [], [], max(0.0, timeout))
        if self._r in r:
            try:
                while os.read(self._r, 4096):
                    pass
            except BlockingIOError:
                pass
        # Cleared after emptying the pipe and before the caller reads its
        # completion queue: a waker that finds it set knows its byte is
        # still unread, so no wake-up is lost.
        self._pending = False
        return sock in r

    def close(self):
        os.close(self._r)
        os.close(self._w)


def drain(amqp_conn, settle, reader=None, budget=DRAIN_BUDGET):
    """Read every frame already there, dispatching them to callbacks.

    Returns True when it stopped at ``budget`` with frames maybe left: the
    next wait must not block.

    ``reader`` (``rpc/frames.py``) reads deliveries faster; without it
    py-amqp reads. The socket is non-blocking for the whole batch instead
    of py-amqp switching it for every frame (two fcntl calls a frame);
    nothing may be written meanwhile, so ``settle`` holds rejects until the
    end.
    """
    sock = amqp_conn.sock
    prev = sock.gettimeout()
    sock.settimeout(0)
    settle.hold()
    try:
        if reader is not None:
            return reader.drain(budget)
        for _ in range(budget):
            amqp_conn.drain_events(timeout=None)
        return True   # budget spent: frames may wait in py-amqp's buffer
    except socket.timeout:
        return False
    finally:
        if amqp_conn.sock is sock:
            sock.settimeout(prev)
        settle.release()


def buffer_reads(amqp_transport, size=65536):
    """Make py-amqp read the socket in large chunks.

    py-amqp asks the socket for exactly the bytes of the next frame part:
    nine recv() calls per message. Its reader keeps any surplus in its
    buffer, so asking for more is safe; without the private hook (another
    py-amqp version) this is skipped and only speed is lost.
    """
    recv = getattr(amqp_transport, '_quick_recv', None)
    if recv is None:
        return
    amqp_transport._quick_recv = lambda n: recv(max(n, size))

