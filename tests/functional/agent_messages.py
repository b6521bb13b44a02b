"""What the tests exchange with a real agent over the broker, beside its
plain calls: the state reports it casts (``Reports``, bound before the
agent starts) and a call that outlives the agent it was sent to
(``InFlight``); ``new_request_id`` makes the request ids calls carry."""

import threading
import time
import uuid as uuidlib


def new_request_id():
    return 'req-' + str(uuidlib.uuid4())


# -- state reports ---------------------------------------------------------------

class Reports:
    """Every report cast to the state topic, in arrival order.

    Bound (an exclusive queue on the state topic's key) before the agent
    starts, so no report is missed. Items are dicts: the report's args plus
    ``_method`` and ``_context``.
    """

    SYNC = '_reports_sync'      # the marker's method (never in ``items``)

    def __init__(self, client):
        self._cond = threading.Condition()
        self.items = []
        self._synced = set()
        self.watcher = client.watch(self._on_report)

    def _on_report(self, method, args, context):
        with self._cond:
            if method == self.SYNC:
                self._synced.add(args.get('token'))
            else:
                self.items.append(dict(args, _method=method,
                                       _context=dict(context or {})))
            self._cond.notify_all()

    def sync(self, client, timeout=5):
        """Return once every report the agent sent before now is in ``items``.

        A call's reply can reach the test before the reports the agent sent
        ahead of it (another queue, another consumer). The agent publishes
        its reports before the reply on one channel, so a marker put on the
        watcher's own queue after the reply comes out behind them. Best
        effort: False if the broker is away or the marker is late.
        """
        token = uuidlib.uuid4().hex
        try:
            client._publish({'method': self.SYNC, 'args': {'token': token}},
                            '', self.watcher.queue)
        except Exception:  # noqa: BLE001 - a test that stopped the broker
            return False
        with self._cond:
            return self._cond.wait_for(lambda: token in self._synced, timeout)

    def mark(self):
        """A position: ``since=mark()`` looks only at later reports."""
        with self._cond:
            return len(self.items)

    def states(self, uuid, since=0):
        """instance_state_changed reports of ``uuid`` (arrival order)."""
        with self._cond:
            return [r for r in self.items[since:]
                    if r['_method'] == 'instance_state_changed'
                    and r.get('instance_uuid') == uuid]

    def hosts(self, since=0):
        with self._cond:
            return [r for r in self.items[since:] if r['_method'] == 'host_state_update']

    def wait(self, predicate, timeout, message, since=0):
        """The first report after ``since`` matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.items[since:]:
                    if predicate(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f'no report {message} within {timeout}s; got:\n'
                        + '\n'.join(_fmt(r) for r in self.items[since:]
                                    if r['_method'] == 'instance_state_changed'))
                self._cond.wait(min(left, 0.5))

    def stop(self):
        self.watcher.stop()


def _fmt(r):
    return (f"  seq={r.get('sequence')} {r.get('instance_uuid')} {r.get('event')} "
            f"{r.get('vm_state')}/{r.get('task_state')}/{r.get('power_state')} "
            f"error={r.get('error')}")


# -- calls that outlive the agent -------------------------------------------------

class InFlight:
    """A call on its own client and thread, outliving the agent it was sent
    to: its reply queue survives the agent's death, so the redelivery's
    reply reaches it."""

    TIMEOUT = 180           # the longest silence: a restart included

    def __init__(self, agent, method, **args):
        from compute_agent.rpc.client import AgentClient
        self.client = AgentClient(agent.url, agent.host, topic=agent.topic,
                                  exchange=agent.exchange, timeout=self.TIMEOUT)
        self.client.context = {'request_id': new_request_id()}
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(method, args),
                                       daemon=True)
        self.thread.start()

    def _run(self, method, args):
        try:
            self.result = self.client.call_args(method, args)
        except Exception as e:  # noqa: BLE001 - the test reports it
            self.error = e

    def reply(self):
        self.thread.join(self.TIMEOUT + 30)
        self.client.close()
        assert not self.thread.is_alive(), 'no reply'
        assert self.error is None, f'the redelivered request failed: {self.error!r}'
        return self.result
