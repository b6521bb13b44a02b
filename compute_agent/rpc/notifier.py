"""State reports (PROTOCOL.md section 4), cast in oslo.messaging format.

Reports are ordinary oslo casts (envelope 2.0, ``version`` "1.0") to the
control exchange with routing key ``[rpc] state_topic``, so a stock
oslo.messaging server on that topic receives them. They go through the
publisher's on-disk outbox: a report made while the broker is away is sent
when it is back.
"""

import datetime
import logging

from compute_agent.rpc import envelope
from compute_agent.rpc import publisher as publisher_mod

LOG = logging.getLogger(__name__)

REPORT_VERSION = '1.0'


def utcnow_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class Notifier:

    def __init__(self, publisher, conf):
        self.publisher = publisher
        self.exchange = conf.control_exchange
        self.routing_key = conf.rpc.state_topic
        self.host = conf.host

    def _cast(self, method, args, context=None):
        payload = {'method': method, 'args': args, 'version': REPORT_VERSION,
                   '_unique_id': envelope.new_id()}
        # flatten_context drops auth_token: a report must not carry it.
        payload.update(envelope.flatten_context(context))
        self.publisher.publish(publisher_mod.REPORT, self.exchange,
                               self.routing_key, envelope.dumps(payload))
        LOG.debug('Report %s: %s', method, envelope.redact(args))

    def instance_state_changed(self, context=None, **fields):
        """Report one change of (vm_state, task_state, power_state).

        ``fields``: instance_uuid, vm_state, task_state, power_state, event,
        error, sequence, and optionally host/request_id/timestamp (filled in
        from the agent and the context when missing).
        """
        context = dict(context or {})
        args = {'host': self.host, 'error': None,
                'request_id': context.get('request_id'),
                'timestamp': utcnow_iso()}
        args.update(fields)
        self._cast('instance_state_changed', args, context)

    def host_state_update(self, **fields):
        """Periodic host record: vcpus, memory_mb, local_gb, running_vms..."""
        args = {'host': self.host, 'timestamp': utcnow_iso()}
        args.update(fields)
        self._cast('host_state_update', args)
