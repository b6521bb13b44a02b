"""State reports (docs: protocol-reports), cast in oslo.messaging format.

Reports are ordinary oslo casts (envelope 2.0, ``version`` "1.0") to the
control exchange with routing key ``[rpc] state_topic``, so a stock
oslo.messaging server on that topic receives them. They go through the
journal's outbox (``rpc/outbox.py``): a report made while the broker is away
is sent when it is back. A state report is built here and written by the
manager together with the record it reports (``state_report``), so that
both are one commit.
"""

import datetime
import logging

from compute_agent.rpc import envelope
from compute_agent.rpc import outbox

LOG = logging.getLogger(__name__)

REPORT_VERSION = '1.0'


def utcnow_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class Notifier:
    """Builds reports; ``journal`` (its outbox) sends them."""

    def __init__(self, journal, conf):
        self.journal = journal
        self.exchange = conf.control_exchange
        self.routing_key = conf.rpc.state_topic
        self.host = conf.host

    def _message(self, method, args, context=None):
        """The report as an outbox message; ``args['sequence']`` may be
        left out: it is filled in by the commit that assigns it."""
        payload = {'method': method, 'args': args, 'version': REPORT_VERSION,
                   '_unique_id': envelope.new_id()}
        # flatten_context drops auth_token: a report must not carry it.
        payload.update(envelope.flatten_context(context))

        def body(sequence):
            if sequence is not None and 'sequence' not in args:
                args['sequence'] = sequence
            LOG.debug('Report %s: %s', method, envelope.redact(args))
            return envelope.dumps(payload)
        return outbox.Message(outbox.REPORT, self.exchange, self.routing_key,
                              body)

    def state_report(self, context=None, **fields):
        """An instance_state_changed report for ``Journal.save_instance``
        or ``next_sequence`` to write with the change it reports.

        ``fields``: instance_uuid, vm_state, task_state, power_state, event,
        error, and optionally host/request_id/timestamp (filled in from the
        agent and the context when missing); ``sequence`` is the one the
        commit assigns.
        """
        context = dict(context or {})
        args = {'host': self.host, 'error': None,
                'request_id': context.get('request_id'),
                'timestamp': utcnow_iso()}
        args.update(fields)
        return self._message('instance_state_changed', args, context)

    def instance_state_changed(self, context=None, **fields):
        """Report one change of (vm_state, task_state, power_state) now;
        ``fields`` as for ``state_report``, with the ``sequence``."""
        self.journal.send([self.state_report(context, **fields)])

    def host_state_update(self, **fields):
        """Periodic host record: vcpus, memory_mb, local_gb, running_vms..."""
        args = {'host': self.host, 'timestamp': utcnow_iso()}
        args.update(fields)
        self.journal.send([self._message('host_state_update', args)],
                          sync=False)
