"""Requirement floors are the ones `tox -e lower-constraints` installs.

Every requirement of requirements.txt and of the ``test`` extra names a
floor (``>=``), and lower-constraints.txt pins exactly that floor, so a
floor nobody tests cannot creep in.
"""

import configparser
import pathlib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _requirements(lines):
    return [Requirement(line.split('#')[0].strip()) for line in lines
            if line.split('#')[0].strip()]


def _declared():
    reqs = _requirements((ROOT / 'requirements.txt').read_text().splitlines())
    setup = configparser.ConfigParser()
    setup.read(ROOT / 'setup.cfg')
    reqs += _requirements(setup['extras']['test'].splitlines())
    return {canonicalize_name(r.name): r for r in reqs}


def _pins():
    pins = {}
    for req in _requirements(
            (ROOT / 'lower-constraints.txt').read_text().splitlines()):
        (spec,) = req.specifier
        assert spec.operator == '==', req
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_every_floor_is_pinned_in_lower_constraints():
    declared, pins = _declared(), _pins()
    assert set(pins) == set(declared)
    for name, req in declared.items():
        floors = [Version(s.version) for s in req.specifier if s.operator == '>=']
        assert floors, '%s has no floor' % name
        assert pins[name] == floors[0], (name, pins[name], floors[0])
        assert req.specifier.contains(pins[name])


def test_caps_and_floors_the_code_relies_on():
    declared = _declared()
    assert declared['amqp'].specifier.contains('5.9') and \
        not declared['amqp'].specifier.contains('6.0')       # rpc/iowait.py
    assert not declared['prometheus-client'].specifier.contains('0.19')
    assert declared['lxml'].specifier.contains('6.2')       # no cap
