"""Progress lines for image downloads, so a slow spawn shows where it is.

At INFO: when the size is known, every ``step_percent`` percent; when it is
not, every ``step_bytes``; both with the rate so far. A download that ends
between steps logs nothing extra (the cache logs the completion).
"""

import logging
import time

LOG = logging.getLogger('compute_agent.images.cache')
MiB = 1 << 20


class DownloadProgress:
    def __init__(self, image_id, size, step_percent=10, step_bytes=100 * MiB,
                 clock=time.monotonic, log=LOG):
        self.image_id = image_id
        self.size = size if size else None
        self.step = (max(1, size * step_percent // 100) if self.size
                     else step_bytes)
        self.done = 0
        self.next = self.step
        self.clock = clock
        self.started = clock()
        self.log = log
        self.lines = 0

    def update(self, nbytes):
        """Count ``nbytes`` more; log when a step is crossed."""
        self.done += nbytes
        if self.done < self.next:
            return
        while self.next <= self.done:
            self.next += self.step
        if self.size is not None and self.done >= self.size:
            return                       # finished: the cache says so
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = self.done / elapsed / MiB
        self.lines += 1
        if self.size:
            self.log.info('Downloading image %s: %d%% (%.1f of %.1f MiB, '
                          '%.1f MiB/s)', self.image_id,
                          self.done * 100 // self.size, self.done / MiB,
                          self.size / MiB, rate)
        else:
            self.log.info('Downloading image %s: %.1f MiB (size unknown, '
                          '%.1f MiB/s)', self.image_id, self.done / MiB, rate)
