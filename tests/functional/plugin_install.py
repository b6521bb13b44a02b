"""Install a test plugin package for entry point discovery, without pip.

``fake_install(fixture_dir, site)`` leaves in ``site`` what
``pip install <fixture_dir>`` would leave for discovery: the package and a
``.dist-info`` whose ``entry_points.txt`` comes from the fixture's
``pyproject.toml``. A process with ``site`` on its ``PYTHONPATH`` then finds
the plugin exactly as an installed one (the venv itself stays untouched, so
other tests never see it).
"""

import os
import shutil
import tomllib
from pathlib import Path


def fake_install(fixture_dir, site):
    fixture_dir, site = Path(fixture_dir), Path(site)
    pyproject = tomllib.loads((fixture_dir / 'pyproject.toml').read_text())
    project = pyproject['project']
    dist = site / ('%s-%s.dist-info' % (project['name'].replace('-', '_'),
                                        project['version']))
    dist.mkdir(parents=True)
    (dist / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: %s\nVersion: %s\n'
        % (project['name'], project['version']))
    lines = []
    for group, eps in project['entry-points'].items():
        lines.append('[%s]' % group)
        lines += ['%s = %s' % kv for kv in eps.items()]
    (dist / 'entry_points.txt').write_text('\n'.join(lines) + '\n')
    for package in pyproject['tool']['setuptools']['packages']:
        shutil.copytree(fixture_dir / package, site / package)
    return site


def env_with(site, cache_dir, base=None):
    """An environment whose processes see the plugins in ``site``
    (``cache_dir``: stevedore's entry point cache, kept per test)."""
    env = dict(os.environ if base is None else base)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (str(site), env.get('PYTHONPATH')) if p)
    env['XDG_CACHE_HOME'] = str(cache_dir)
    return env
