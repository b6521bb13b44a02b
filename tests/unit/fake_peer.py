"""The other agent as a fake, for the settlement tests on one host (the
two-host crash tests in tests/functional use real ones): ``FakePeer``
answers each method from ``answers`` and notes ``calls``; the ``peer``
fixture puts it in place of compute_agent.rpc.peer.Peer."""

import pytest

from compute_agent.rpc import peer as peer_mod


class FakePeer:
    """The other agent: answers from ``answers`` (method -> value or error)."""
    calls = []
    answers = {}

    def __init__(self, conf, host, context=None):
        self.host = host

    def call(self, method, instance_uuid, **migration):
        FakePeer.calls.append((self.host, method))
        answer = FakePeer.answers.get(method)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.fixture
def peer(monkeypatch):
    """FakePeer in place of Peer, with no calls and no answers yet."""
    FakePeer.calls, FakePeer.answers = [], {}
    monkeypatch.setattr(peer_mod, 'Peer', FakePeer)
    return FakePeer
