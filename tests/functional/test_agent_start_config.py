"""The real compute-agent process with a nova.conf-like file: options it does
not know are named once at start (values never), nova's names work, and its
lines follow oslo.log's format (PID, request id, [instance: uuid])."""

import os
import re

import pytest

from tests.functional.test_service import agents, tmp  # noqa: F401

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]


def test_unknown_options_named_once_and_nova_names_honoured(agents):  # noqa: F811
    agent = agents(extra={
        'DEFAULT': {'compute_driver': 'libvirt.LibvirtDriver',
                    'my_ip': '192.0.2.9', 'use_cow_images': 'false'},
        'database': {'connection': 'mysql://nova:db-secret-pw@192.0.2.1/nova'},
        'vnc': {'vncserver_listen': '0.0.0.0',
                'vncserver_proxyclient_address': '$my_ip'},
        'image_cache': {'remove_unused_base_images': 'false'},
    })
    agent.start()
    client = agent.client(context={'request_id': 'req-' + agent.suffix})
    try:
        client.ping()
    finally:
        client.close()
    agent.stop()
    log = agent.log()
    lines = [line for line in log.splitlines() if 'does not know' in line]
    assert len(lines) == 2, lines
    assert any('[DEFAULT]: compute_driver' in line for line in lines)
    assert any('[database]: connection' in line for line in lines)
    assert 'db-secret-pw' not in log
    # nova's own [DEFAULT] use_cow_images is not reported as deprecated.
    assert not [line for line in log.splitlines()
                if 'use_cow_images' in line and 'eprecated' in line]
    # oslo.log's default format: time, PID, level, logger.
    pid = agent.proc.pid
    assert re.search(r'^\S+ \S+ %d (INFO|WARNING) compute_agent' % pid, log,
                     re.MULTILINE), log[-2000:]
    assert os.path.exists(agent.log_path)
