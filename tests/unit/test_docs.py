"""The protocol documentation keeps up with the code it describes.

docs/source/protocol/ is the wire contract for scheduler authors. These
checks fail when a method, an argument, an error class or a state
transition the agent serves is missing from it, or when a 1.1 method is
served but still marked "Not yet served" (or the reverse). The Sphinx build
itself (tools/test.sh, tox -e docs) catches broken references and options.
"""

import pathlib
import re

import pytest

from compute_agent import exception
from compute_agent import schemas
from compute_agent import states

PROTOCOL_DIR = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'source' / 'protocol'
NOT_SERVED = 'Not yet served'
# The methods version 1.1 of the contract adds (docs: protocol-methods-1-1).
METHODS_1_1 = (
    'attach_volume', 'detach_volume', 'attach_interface', 'detach_interface',
    'update_security_rules', 'snapshot', 'resize', 'confirm_resize',
    'revert_resize', 'rebuild', 'set_admin_password', 'live_migrate',
    'live_migrate_abort', 'migrate')
_LABEL = re.compile(r'^\.\. _([a-z0-9-]+):\s*$', re.MULTILINE)


def _sections(name):
    """{label: text up to the next label} of one protocol page."""
    text = (PROTOCOL_DIR / name).read_text()
    marks = list(_LABEL.finditer(text))
    out = {}
    for i, mark in enumerate(marks):
        end = len(text)
        for later in marks[i + 1:]:
            # Labels stacked on one section share its text.
            if text[mark.end():later.start()].strip():
                end = later.start()
                break
        out[mark.group(1)] = text[mark.end():end]
    return out


ALL = {}
for _page in sorted(PROTOCOL_DIR.glob('*.rst')):
    ALL.update(_sections(_page.name))


def _label(method):
    return 'protocol-method-' + method.replace('_', '-')


@pytest.mark.parametrize('method', schemas.METHODS)
def test_every_served_method_is_documented_with_its_arguments(method):
    section = ALL.get(_label(method))
    assert section is not None, 'no section labelled %s' % _label(method)
    for arg in schemas.ARGS[method]:
        assert '``%s``' % arg in section, '%s: argument %s not documented' % (
            method, arg)


@pytest.mark.parametrize('method', schemas.METHODS)
def test_a_served_method_is_not_marked_not_yet_served(method):
    assert NOT_SERVED not in ALL[_label(method)]


@pytest.mark.parametrize('method', METHODS_1_1)
def test_a_1_1_method_is_marked_exactly_while_it_is_not_served(method):
    section = ALL.get(_label(method))
    assert section is not None, 'no section labelled %s' % _label(method)
    assert (NOT_SERVED in section) == (method not in schemas.METHODS)


@pytest.mark.parametrize('name', sorted(exception.WIRE_ERRORS))
def test_every_wire_error_class_is_documented(name):
    assert '``%s``' % name in ALL['protocol-errors']


def _transition_rows():
    """method -> the text of its row in the transitions table."""
    table = ALL['protocol-transitions']
    rows = re.split(r'^   \* - ', table, flags=re.MULTILINE)[1:]
    out = {}
    for row in rows:
        name = re.match(r'``([a-z_]+)``( ``HARD``)?', row)
        if name:            # the HARD reboot row is states' reboot_hard
            out[name.group(1) + ('_hard' if name.group(2) else '')] = row
    return out


@pytest.mark.parametrize('method', sorted(states.TRANSITIONS))
def test_the_transitions_table_lists_each_method_as_the_state_table_does(method):
    row = _transition_rows().get(method)
    assert row is not None, 'transitions table has no row for %s' % method
    tr = states.TRANSITIONS[method]
    cells = row.split('\n     - ')
    assert '``%s``' % tr.task in cells[2]
    phrase = {states.PREVIOUS: 'where it started',
              states.AS_POWERED: 'as its power state says'}
    assert phrase.get(tr.end_vm_state, '``%s``' % tr.end_vm_state) in cells[3]
    assert ('unchanged' if tr.end_power_state is None
            else str(tr.end_power_state)) in cells[4]
    for start in tr.allowed:
        if start is not None:
            assert '``%s``' % start in cells[1], (method, start)


def test_every_task_state_is_listed_with_the_state_values():
    text = (PROTOCOL_DIR / 'reports.rst').read_text()
    values = text[text.index('``task_state``:'):text.index('``power_state``:')]
    tasks = {task for tr in states.TRANSITIONS.values() for task in (tr.task,) + tr.then}
    assert {t for t in tasks if '``%s``' % t not in values} == set()
