"""The console log bound (virt/console.py): virtlogd's limits, pruning of
rotated files, and reading the newest lines across a rotation."""

import os

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.virt import console

MiB = 1024 * 1024


@pytest.mark.parametrize('text, expected', [
    ('', (2 * MiB, 3)),                                   # libvirt's defaults
    ('max_size = 1048576\n', (MiB, 3)),
    ('max_backups = 1\n#max_size = 5\n', (2 * MiB, 1)),
    ('  max_size=0  # no rollover\nmax_backups = 9\n', (0, 9)),
    ('max_size = "big"\n', (2 * MiB, 3)),                 # not a number: ignored
])
def test_virtlogd_limits(tmp_path, text, expected):
    path = tmp_path / 'virtlogd.conf'
    path.write_text(text)
    assert console.virtlogd_limits(str(path)) == expected


def test_virtlogd_limits_without_a_file(tmp_path):
    assert console.virtlogd_limits(str(tmp_path / 'none')) == (2 * MiB, 3)


def _conf(tmp_path, bound, virtlogd_text):
    path = tmp_path / 'virtlogd.conf'
    path.write_text(virtlogd_text)
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    conf.set_override('console_log_max_bytes', bound, 'libvirt')
    conf.set_override('virtlogd_conf', str(path), 'libvirt')
    return conf


@pytest.mark.parametrize('bound, virtlogd_text, keep, pruning', [
    (8 * MiB, '', 3, None),                  # defaults fit exactly
    (64 * MiB, '', 3, None),                 # virtlogd keeps fewer than allowed
    (4 * MiB, '', 1, 1),                     # live 2 MiB + one rotated file
    (2 * MiB, '', 0, 0),                     # only the live file
    (3 * MiB, 'max_size = 1048576\n', 2, 2),
])
def test_backups_allowed(tmp_path, bound, virtlogd_text, keep, pruning):
    conf = _conf(tmp_path, bound, virtlogd_text)
    assert console.backups_allowed(conf) == keep
    # None: virtlogd's own rotation is the bound, the power sync lists nothing
    assert console.pruning(conf) == pruning


@pytest.mark.parametrize('bound, virtlogd_text', [
    (MiB, ''),                               # one 2 MiB file is already too much
    (8 * MiB, 'max_size = 0\n'),             # rollover off: unbounded
])
def test_backups_allowed_refuses_an_unbounded_log(tmp_path, bound, virtlogd_text):
    conf = _conf(tmp_path, bound, virtlogd_text)
    with pytest.raises(exception.ConfigError, match='console_log_max_bytes'):
        console.backups_allowed(conf)
    with pytest.raises(exception.ConfigError, match='console_log_max_bytes'):
        agent_conf.check(conf)          # the agent does not start


def _write(path, lines):
    path.write_text(''.join(line + '\n' for line in lines))


def test_prune_keeps_the_newest(tmp_path):
    _write(tmp_path / 'console.log', ['live'])
    for i in range(4):
        _write(tmp_path / ('console.log.%d' % i), ['old %d' % i])
    (tmp_path / 'console.log.x').write_text('not a rotation')
    assert console.prune(str(tmp_path), 1) == 3
    assert sorted(os.listdir(tmp_path)) == ['console.log', 'console.log.0',
                                            'console.log.x']
    assert console.prune(str(tmp_path), 1) == 0


def test_tail_across_a_rotation(tmp_path):
    _write(tmp_path / 'console.log.1', ['oldest'])
    _write(tmp_path / 'console.log.0', ['a%d' % i for i in range(5)])
    _write(tmp_path / 'console.log', ['b0', 'b1'])
    assert console.tail(str(tmp_path), 2) == 'b0\nb1\n'
    assert console.tail(str(tmp_path), 4) == 'a3\na4\nb0\nb1\n'
    # Never further back than the newest rotated file.
    assert console.tail(str(tmp_path), 100).splitlines()[0] == 'a0'


@pytest.mark.parametrize('files, lines, expected', [
    ({}, 10, ''),
    ({'console.log': 'x\r\ny\r\n'}, 10, 'x\ny\n'),          # serial CRs dropped
    ({'console.log': 'partial'}, 1, 'partial'),
    ({'console.log.0': 'rotated only\n'}, 5, 'rotated only\n'),
    ({'console.log': 'a\n'}, 0, ''),
])
def test_tail_cases(tmp_path, files, lines, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert console.tail(str(tmp_path), lines) == expected


def test_tail_of_a_missing_directory(tmp_path):
    assert console.tail(str(tmp_path / 'gone'), 10) == ''
