"""What the RPC server needs from the instance manager.

The server knows the wire; the dispatcher knows the methods. Keeping this
interface narrow lets the server be tested with a double
(tests/functional/rpc_fixtures.py) and the manager without a broker.

Optional attributes tune the server: ``inline_methods`` (keyless methods
answered on the consume thread itself, memory only), ``unheld_methods``
(never held for admission: read-only ones answer at once however many
state-changing requests wait) and ``arrival_methods`` (validated and keyed
as they arrive even when held, for what ``key`` does at once).
"""

from typing import Protocol, runtime_checkable


@runtime_checkable
class Dispatcher(Protocol):

    def validate(self, method: str, args: dict, version: str) -> dict:
        """Return normalized args or raise InvalidRequest/UnsupportedVersion.

        Runs on the consume thread when the request is admitted, before it
        is queued for a worker (a state-changing request may first be held:
        rpc/server.py, ``_held``): it must be cheap and must not touch the
        hypervisor. This is where a request is validated and planned, once:
        the returned args may carry what was planned (the manager adds
        ``plan`` to a spawn's), and they travel with the job, unchanged, to
        ``key`` and ``dispatch``. They are never journaled nor sent
        anywhere.
        """

    def key(self, method: str, args: dict) -> str | None:
        """Serialization key (the instance uuid), or None to run at once.

        Requests with the same key run one at a time in arrival order;
        None is for read-only requests that may run beside anything (ping,
        get_info): their outcome is journaled without an fsync, since running
        one again after a power cut is harmless.
        """

    def dispatch(self, method: str, args: dict, context: dict) -> object:
        """Do the work on a worker thread and return a JSON-able result.

        ``args`` are what ``validate`` returned.

        Raise AgentError subclasses for expected failures; anything else
        becomes a failure named after its class.
        """

    def report_invalid(self, method: str, uuid: str, error: Exception,
                       context: dict) -> None:
        """Emit the ``<method>.error`` state report for a rejected request."""

    def instance_uuid_of(self, method: str, args: object) -> str | None:
        """Best-effort instance uuid of a (possibly invalid) request.

        Optional: the server falls back to ``args['instance']['uuid']`` or
        ``args['instance_uuid']`` when the dispatcher does not have it.
        """
