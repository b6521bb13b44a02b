"""Options in the config files that the agent does not know.

A nova.conf handed to the agent carries many options it has no use for
([database], [placement], compute_driver...). They are harmless, but an
operator who mistypes an option should hear about it: ``warn_unknown`` logs
each file section's unknown option names once, as one warning per section.
Values are never logged (an unknown option may hold a password).
"""

import glob
import logging
import os

from oslo_config import cfg

LOG = logging.getLogger(__name__)


def config_files(conf):
    """The files oslo.config read: --config-file ones, then --config-dir's."""
    files = list(conf.config_file or [])
    dirs = conf.config_dir or []
    for directory in [dirs] if isinstance(dirs, str) else dirs:
        files += sorted(glob.glob(os.path.join(directory, '*.conf')))
    return [f for f in files if os.path.isfile(f)]


def known_names(conf):
    """``{(section, name)}`` of every registered option and deprecated name.

    oslo.config has no public walk over registered options with their
    deprecated names; ``_all_opt_infos`` has been stable since 2013.
    """
    known = set()
    for info, group in conf._all_opt_infos():
        opt = info['opt']
        section = group.name if group is not None else 'DEFAULT'
        known.add((section, opt.dest))
        for dep in opt.deprecated_opts:
            known.add((dep.group or section,
                       (dep.name or opt.dest).replace('-', '_')))
    return known


def unknown_options(conf):
    """``{section: [names]}`` set in the files but not known to ``conf``."""
    known = known_names(conf)
    unknown = {}
    for path in config_files(conf):
        sections = {}
        try:
            cfg.ConfigParser(path, sections).parse()
        except (OSError, cfg.ParseError):
            continue          # oslo.config itself reported it at load
        for section, values in sections.items():
            # oslo.config matches group names case-insensitively.
            section = section if section == 'DEFAULT' else section.lower()
            for name in values:
                if (section, name) not in known and \
                        name not in unknown.get(section, ()):
                    unknown.setdefault(section, []).append(name)
    return unknown


def warn_unknown(conf, log=LOG):
    """Log one warning per section naming its unknown options; returns them."""
    unknown = unknown_options(conf)
    for section, names in sorted(unknown.items()):
        log.warning('Ignoring options the agent does not know in [%s]: %s',
                    section, ', '.join(sorted(names)))
    return unknown
