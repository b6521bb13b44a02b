"""What the three console scripts share: default config files, --version."""

import os

from compute_agent import version

CONFIG_DIR = '/etc/compute-agent'
CONFIG_FILE = os.path.join(CONFIG_DIR, 'compute-agent.conf')
CONFIG_D = os.path.join(CONFIG_DIR, 'compute-agent.conf.d')


def default_config_files():
    """/etc/compute-agent/compute-agent.conf when it exists (used only when
    no --config-file is given, as oslo.config does)."""
    return [CONFIG_FILE] if os.path.isfile(CONFIG_FILE) else []


def default_config_dirs():
    """/etc/compute-agent/compute-agent.conf.d when it exists."""
    return [CONFIG_D] if os.path.isdir(CONFIG_D) else []


def version_string(prog):
    return '%s %s (RPC API %s)' % (prog, version.package_version(),
                                   version.RPC_API_VERSION)
