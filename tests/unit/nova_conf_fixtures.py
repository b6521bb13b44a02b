"""The two real nova.conf files in tests/data/nova, filled in and loaded.

``folsom-2012.2.conf`` is trimmed from nova 2012.2's etc/nova/nova.conf.sample
and ``current.conf`` follows nova master's option names and groups (both read
from openstack/nova; see each file's header). ``@NAME@`` placeholders are
replaced by ``render``.
"""

import pathlib
import re
import urllib.parse

from oslo_config import cfg

from compute_agent import conf as agent_conf

DATA = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'nova'
FOLSOM = 'folsom-2012.2.conf'
CURRENT = 'current.conf'
# Spaces, a comma and non-ASCII: must survive into the broker login.
RABBIT_PASSWORD = 'n0va pass,wörd'


def render(name, path, **values):
    """Write ``name`` with its placeholders filled in to ``path``."""
    values.setdefault('RABBIT_PASSWORD', RABBIT_PASSWORD)
    values['RABBIT_PASSWORD_QUOTED'] = urllib.parse.quote(
        values['RABBIT_PASSWORD'], safe='')
    text = (DATA / name).read_text()
    for key, value in values.items():
        text = text.replace('@%s@' % key, str(value))
    left = re.findall(r'@[A-Z_]+@', text)
    assert not left, 'unfilled placeholders %s' % left
    pathlib.Path(path).write_text(text)
    return str(path)


def load(*paths):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf(args=[arg for p in paths for arg in ('--config-file', str(p))],
         project='compute-agent', default_config_files=[])
    return conf
