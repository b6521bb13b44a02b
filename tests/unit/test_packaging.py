"""README, .ci/run, the unit and the packaging agree with each other."""

import configparser
import pathlib
import re
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]


def literal_blocks(section):
    """The ``::`` literal blocks of one README section, as lists of lines."""
    text = (REPO / 'README.rst').read_text()
    body = text.split('\n%s\n%s\n' % (section, '=' * len(section)), 1)[1]
    body = re.split(r'\n[^\n]+\n=+\n', body, maxsplit=1)[0]
    blocks, current, indent = [], None, None
    for line in body.splitlines():
        if current is not None:
            if not line.strip():
                continue
            width = len(line) - len(line.lstrip())
            if indent is None:
                indent = width
            if width >= indent:
                current.append(line.strip())
                continue
            blocks.append(current)
            current = None
        if line.rstrip().endswith('::'):
            current, indent = [], None
    if current:
        blocks.append(current)
    return blocks


def script_lines(path):
    return [line.strip() for line in (REPO / path).read_text().splitlines()
            if line.strip() and not line.lstrip().startswith('#')]


def test_ci_runs_the_readme_commands_as_written():
    commands = [line for block in literal_blocks('Quick start') for line in block]
    assert commands == ['tools/quickstart.sh', 'tools/test.sh']
    lines = script_lines('.ci/run')
    # Each command is a whole line of .ci/run, in README order, and the
    # last one is the script's last line (its status is CI's status).
    assert [line for line in lines if line in commands] == commands
    assert lines[-1] == commands[-1]
    assert 'set -euo pipefail' in lines


def test_readme_commands_need_no_sudo():
    for path in ('tools/quickstart.sh', 'tools/test.sh', '.ci/run',
                 'tools/install.sh'):
        assert not [line for line in script_lines(path)
                    if re.search(r'(^|[;&|]\s*)sudo\s', line)], path
    for block in literal_blocks('Quick start') + literal_blocks(
            'Running in production'):
        assert not [line for line in block if line.startswith('sudo')]


def test_production_block_is_what_the_systemd_test_runs():
    [block] = literal_blocks('Running in production')
    assert block == ['tools/install.sh',
                     'editor /etc/compute-agent/compute-agent.conf',
                     'systemctl daemon-reload',
                     'systemctl enable --now compute-agent']


def unit():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(REPO / 'etc' / 'systemd' / 'compute-agent.service')
    return parser


def test_unit_paths_match_the_install():
    u = unit()
    exec_start = u['Service']['ExecStart'].split()
    assert exec_start[0] == '/opt/compute-agent/bin/compute-agent'
    # The config dir it names is one tools/install.sh creates.
    install = (REPO / 'tools' / 'install.sh').read_text()
    assert 'PREFIX=${1:-/opt/compute-agent}' in install
    assert 'CONF_DIR=${CA_CONF_DIR:-/etc/compute-agent}' in install
    assert '"$CONF_DIR/compute-agent.conf.d"' in install
    assert exec_start[1:] == [
        '--config-file', '/etc/compute-agent/compute-agent.conf',
        '--config-dir', '/etc/compute-agent/compute-agent.conf.d']
    doc = u['Unit']['Documentation']
    assert doc == 'file:///opt/compute-agent/share/doc/compute-agent/README.rst'
    assert u['Service']['Type'] == 'notify' and u['Service']['WatchdogSec']


def test_wheel_data_files_carry_the_sample_unit_and_readme():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / 'setup.cfg')
    data = {}
    target = None
    for line in cfg['files']['data_files'].splitlines():
        if '=' in line:
            target, _, files = (p.strip() for p in line.partition('='))
            data[target] = files.split()
        elif line.strip():
            data[target].append(line.strip())
    assert data['share/compute-agent'] == [
        'etc/compute-agent/compute-agent.conf.sample']
    assert data['share/compute-agent/systemd'] == [
        'etc/systemd/compute-agent.service']
    assert set(data['share/doc/compute-agent']) == {'README.rst', 'LICENSE'}
    for files in data.values():
        for f in files:
            assert (REPO / f).is_file(), f
    # The unit's Documentation= is one of those, under the venv prefix.
    assert unit()['Unit']['Documentation'].endswith(
        '/share/doc/compute-agent/README.rst')


def test_license_and_build_system():
    text = (REPO / 'LICENSE').read_text()
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text
    assert 'END OF TERMS AND CONDITIONS' in text
    pyproject = tomllib.loads((REPO / 'pyproject.toml').read_text())
    assert pyproject['build-system']['build-backend'] == 'pbr.build'
    assert any(r.startswith('pbr') for r in pyproject['build-system']['requires'])
