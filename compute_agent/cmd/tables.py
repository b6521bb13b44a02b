"""Plain-text tables for compute-agent-ctl's human output."""

import json


def cell(value):
    if value is None:
        return '-'
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(',', ':'))
    return str(value)


def table(headers, rows):
    """Left-aligned columns under an underlined header; one string."""
    rows = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows])
              for i, h in enumerate(headers)]

    def line(values):
        return '  '.join(v.ljust(w) for v, w in zip(values, widths)).rstrip()
    out = [line(headers), line(['-' * w for w in widths])]
    out += [line(r) for r in rows]
    return '\n'.join(out)


def fields(record, order=()):
    """A FIELD/VALUE table of a dict: ``order`` first, the rest sorted."""
    keys = [k for k in order if k in record]
    keys += sorted(k for k in record if k not in keys)
    return table(['FIELD', 'VALUE'], [[k, record[k]] for k in keys])


INSTANCE_COLUMNS = ('uuid', 'name', 'vm_state', 'task_state', 'power_state',
                    'host')
INSTANCE_ORDER = INSTANCE_COLUMNS + ('devices', 'vnc', 'error', 'created_at',
                                     'updated_at')
DEAD_LETTER_COLUMNS = ('id', 'method', 'instance', 'reason', 'age_s')


def rows(records, columns):
    return table([c.upper() for c in columns],
                 [[r.get(c) for c in columns] for r in records])
