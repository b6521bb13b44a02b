"""What the three console scripts share: --version and the default config."""

import os
import subprocess
import sys

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent.cmd import agent as agent_cmd
from compute_agent.cmd import common
from compute_agent.cmd import ctl
from compute_agent.cmd import render

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize('tool', ['compute-agent', 'compute-agent-ctl',
                                  'compute-agent-render'])
def test_version(tool):
    proc = subprocess.run([os.path.join(BIN, tool), '--version'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = (proc.stdout + proc.stderr).strip()
    assert out.startswith(tool + ' ') and '(RPC API ' in out


@pytest.fixture
def etc(tmp_path, monkeypatch):
    """Point the default /etc/compute-agent paths at a temp dir."""
    path = tmp_path / 'compute-agent.conf'
    monkeypatch.setattr(common, 'CONFIG_FILE', str(path))
    monkeypatch.setattr(common, 'CONFIG_D', str(tmp_path / 'compute-agent.conf.d'))
    return path


def test_no_default_file_no_default(etc):
    assert common.default_config_files() == []
    assert common.default_config_dirs() == []


def test_agent_reads_the_default_file_and_dir(etc):
    etc.write_text('[DEFAULT]\nhost = from-etc\n')
    conf_d = etc.parent / 'compute-agent.conf.d'
    conf_d.mkdir()
    (conf_d / '10-rpc.conf').write_text('[rpc]\ntopic = from-conf-d\n')
    conf = agent_conf.register_all(cfg.ConfigOpts())
    agent_cmd.load_config([], conf=conf)
    assert conf.host == 'from-etc' and conf.rpc.topic == 'from-conf-d'


def test_ctl_reads_the_default_file(etc, capsys):
    # A broker port nothing listens on: the error names it, so the file
    # was read.
    etc.write_text('[DEFAULT]\ntransport_url = rabbit://u:p@127.0.0.1:9/\n')
    assert ctl.main(['ping']) == ctl.EXIT_BROKER
    assert capsys.readouterr().err.startswith(
        'error: broker unreachable at 127.0.0.1:9:')


def test_render_reads_the_default_file(etc, tmp_path, capsys):
    etc.write_text('[libvirt]\nvirt_type = vmware\n')
    request = tmp_path / 'r.json'
    request.write_text('{}')
    try:
        assert render.main(['--request', str(request)]) == 2
    finally:
        agent_conf.CONF.clear()     # render parses the global CONF
    assert 'virt_type' in capsys.readouterr().err
