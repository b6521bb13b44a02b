"""The sd_notify protocol: one datagram to the socket in $NOTIFY_SOCKET.

Used for Type=notify readiness (READY=1), the watchdog (WATCHDOG=1), STATUS=
lines, EXTEND_TIMEOUT_USEC= and STOPPING=1. Without NOTIFY_SOCKET every call is a no-op.
"""

import os
import socket


class Notifier:
    def __init__(self, address=None):
        address = address if address is not None else os.environ.get('NOTIFY_SOCKET')
        if address and address.startswith('@'):
            address = '\0' + address[1:]      # abstract namespace
        self.address = address or None

    @property
    def enabled(self):
        return self.address is not None

    def notify(self, **fields):
        """Send ``KEY=value`` lines, e.g. notify(READY=1, STATUS='up')."""
        if not self.address:
            return False
        data = '\n'.join('%s=%s' % kv for kv in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(data, self.address)
            except OSError:
                return False
        return True

    def ready(self, status='serving'):
        return self.notify(READY=1, STATUS=status)

    def status(self, text):
        return self.notify(STATUS=text)

    def watchdog(self):
        return self.notify(WATCHDOG=1)

    def stopping(self, status='stopping'):
        return self.notify(STOPPING=1, STATUS=status)

    def extend_timeout(self, seconds, status=None):
        """Ask for ``seconds`` more before the start (or stop) times out."""
        fields = {'EXTEND_TIMEOUT_USEC': int(seconds * 1e6)}
        if status:
            fields['STATUS'] = status
        return self.notify(**fields)


def watchdog_interval():
    """Seconds between WATCHDOG=1 pings: half of WatchdogSec, or None."""
    usec = os.environ.get('WATCHDOG_USEC')
    pid = os.environ.get('WATCHDOG_PID')
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.5)
    except ValueError:
        return None
