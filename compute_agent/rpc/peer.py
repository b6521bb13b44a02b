"""Calls from this agent to another agent (the migration handshake).

The agents find each other through the broker they already use: a call to
``<topic>.<host>`` on the control exchange, with this agent's own broker
credentials (docs: protocol-migration-hosts; no other trust between hosts).
A peer that has no queue (unknown host) or does not answer within
``[libvirt] live_migration_peer_timeout`` (its heartbeats extend the wait)
is ``PeerUnavailable``; a failure it replies with is raised again here as
the same error class of ``compute_agent.exception`` when there is one.
"""

from compute_agent import exception
from compute_agent.conf import rabbit as rabbit_conf
from compute_agent.rpc import client as client_mod

# Context keys passed on to the peer (for its logs and reports).
_CONTEXT_KEYS = ('request_id', 'user_id', 'project_id')


class PeerUnavailable(Exception):
    """No agent of that host answered."""


class Peer:
    """One other agent, for the length of one operation (``with``)."""

    def __init__(self, conf, host, context=None):
        self.host = host
        self._client = client_mod.AgentClient(
            rabbit_conf.transport_url(conf), host, topic=conf.rpc.topic,
            exchange=conf.control_exchange,
            timeout=conf.libvirt.live_migration_peer_timeout,
            durable_exchange=conf.rpc.amqp_durable_queues, conf=conf,
            context={k: v for k, v in (context or {}).items()
                     if k in _CONTEXT_KEYS})

    def call(self, method, instance_uuid, **migration):
        try:
            return self._client.call(method, instance_uuid=instance_uuid,
                                     migration=migration)
        except client_mod.Unroutable:
            raise PeerUnavailable('no agent serves host %s' % self.host) from None
        except client_mod.Timeout:
            raise PeerUnavailable('the agent of host %s did not answer'
                                  % self.host) from None
        except (OSError, ConnectionError) as e:
            raise PeerUnavailable('the broker failed while calling host %s: '
                                  '%s' % (self.host, e)) from None
        except client_mod.RemoteError as e:
            cls = exception.WIRE_ERRORS.get(e.exc_type) or {
                'MigrationError': exception.MigrationError,
                'MigrationPreCheckError': exception.MigrationPreCheckError,
            }.get(e.exc_type)
            if cls is None or cls is exception.InvalidRequest:
                cls = exception.MigrationError
            raise cls('%s (from %s)' % (e.value, self.host)) from None

    def close(self):
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
