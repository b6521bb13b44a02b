"""compute-agent's main loop and its signals: the handlers only record a
signal, the main loop acts on it (cmd/agent.py says why: a handler that
takes a lock can deadlock the main thread, and the agent never stops)."""

import os
import signal
import types

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import service as service_mod
from compute_agent.cmd import agent as agent_cmd


@pytest.fixture
def run(monkeypatch):
    """main() with a stand-in Service whose start() is given; the events
    main() caused, in order, and its exit status."""
    saved = {s: signal.getsignal(s)
             for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    events = []
    monkeypatch.setattr(agent_cmd, 'load_config', lambda argv: conf)
    monkeypatch.setattr(agent_cmd, 'setup_logging',
                        lambda c: events.append('logging'))
    monkeypatch.setattr(conf, 'mutate_config_files',
                        lambda: events.append('reload'))

    def main(start):
        class Service:
            def __init__(self, _conf):
                self.server = types.SimpleNamespace(error=None)

            def start(self):
                start(self)

            def stop(self, timeout=None):
                events.append(('stop', timeout))
        monkeypatch.setattr(service_mod, 'Service', Service)
        try:
            return agent_cmd.main([]), events
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
    return main


def test_hup_reloads_and_term_stops_from_the_main_loop(run):
    def start(_service):
        # Both arrive before the loop runs: the handlers only record them.
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
    status, events = run(start)
    assert status == 0
    assert events == ['logging', 'reload', 'logging', ('stop', None)]


def test_a_server_that_gave_up_ends_the_agent_with_1(run):
    def start(service):
        service.server.error = 'broker refused us'
    status, events = run(start)
    assert status == 1
    assert events == ['logging', ('stop', 0)]
