"""Logging through oslo.log: request id and instance on every line, no secret.

``register(conf)`` adds oslo.log's options (``debug``, ``log_file``,
``use_json``, ``use_journal``, the format strings...); ``setup(conf)``
configures the root logger from them, as every OpenStack service does, and
puts a masking step in front of each handler's formatter. The default format
carries the PID and ``[instance: <uuid>]``.

``request_context()`` makes an oslo.context ``RequestContext`` (request id,
instance uuid as its ``resource_uuid``) current for the thread serving a
request, so every line logged meanwhile names both without each call site
passing them along.

Masking (``mask``) runs twice: on the message before formatting (so the
JSON formatter's ``msg``/``args`` fields never see a secret) and on the
formatted output (tracebacks, context). A message longer than
``[DEFAULT] log_line_max_length`` is cut before masking, which bounds the work per
line; the scan itself is linear in the length of what it is given.
"""

import contextlib
import json
import logging
import re
import warnings

from oslo_context import context as oslo_context

with warnings.catch_warnings():
    # oslo.log < 8.3 imports eventlet (through oslo.utils) whenever it is
    # installed, e.g. beside oslo.messaging, and eventlet warns about its own
    # deprecation on import; the agent does not use eventlet.
    warnings.filterwarnings('ignore', message=r'(?s).*Eventlet is deprecated')
    from oslo_log import log as oslo_log

PROJECT = 'compute-agent'
EXTRA_LOG_LEVELS = ['kombu=WARN', 'pyroute2=WARN']

# A value following one of these key names (key=value, "key": "value",
# key: value, in any quoting) is masked. Matched as the end of a key, so
# admin_password, rescue_password, _context_auth_token all count.
SECRET_KEYS = ('password', 'passwd', 'admin_pass', 'adminpass', 'new_pass',
               'secret', 'auth_token', 'token', 'passphrase', 'private_key',
               'transport_url')
_KEY_RE = re.compile(
    r'(?:%s)(?:\\*[\'"])?[ \t]*[:=][ \t]*' % '|'.join(SECRET_KEYS),
    re.IGNORECASE)
_URL_PASSWORD_RE = re.compile(r'(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@')
MASK = '***'


_KEEP_RE = re.compile(r'(?:None|null)(?![\w.])')   # no secret to hide


def register(conf):
    # oslo.log also puts a stderr handler on the root logger "until logging
    # is set up"; registering options must not configure logging (render
    # and ctl keep stderr to their own one-line errors), so it is removed.
    root = logging.getLogger()
    before = list(root.handlers)
    oslo_log.register_options(conf)
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
    conf.set_default('default_log_levels',
                     oslo_log.get_default_log_levels() + EXTRA_LOG_LEVELS)


def _quoted_end(text, start, end, backslashes, quote):
    """Index just past the closing quote, before ``end``, of a value opened
    by ``backslashes`` backslashes and ``quote`` (0 for plain quoting, 1 for
    a quoted string inside a JSON string, ...), or -1."""
    period = 2 * (backslashes + 1)     # one escaped backslash, at this depth
    pos = start
    while True:
        pos = text.find(quote, pos, end)
        if pos < 0:
            return -1
        run = 0
        while run < pos - start and text[pos - 1 - run] == '\\':
            run += 1
        if run >= backslashes and (run - backslashes) % period == 0:
            return pos + 1
        pos += 1


def mask(text):
    """``text`` with every secret value replaced by ``***``.

    A quoted value is masked up to its closing quote (escapes understood,
    also in JSON nested in JSON); an unquoted one, or one whose quote never
    closes (a cut line), up to the end of the line. Linear in ``len(text)``:
    every scan stays within the current line and starts past the last one.
    """
    if not isinstance(text, str):
        text = str(text)
    out = []
    pos = 0
    eol = -1        # end of the current line; only ever searched forward
    while True:
        m = _KEY_RE.search(text, pos)
        if m is None:
            break
        vstart = m.end()
        out.append(text[pos:vstart])
        bs = 0
        while vstart + bs < len(text) and text[vstart + bs] == '\\':
            bs += 1
        q = text[vstart + bs] if vstart + bs < len(text) else ''
        if eol < vstart:
            eol = text.find('\n', vstart)
            eol = len(text) if eol < 0 else eol
        if q in ('"', "'"):
            end = _quoted_end(text, vstart + bs + 1, eol, bs, q)
            if end < 0:
                out.append(text[vstart:vstart + bs + 1] + MASK)
                pos = eol
            else:
                out.append(text[vstart:vstart + bs + 1] + MASK
                           + text[end - 1 - bs:end])
                pos = end
        elif _KEEP_RE.match(text, vstart):
            pos = vstart
        else:
            out.append(MASK)
            pos = eol
    out.append(text[pos:])
    return _URL_PASSWORD_RE.sub(r'\g<pre>***@', ''.join(out))


def truncate(text, limit):
    """``text`` cut to ``limit`` characters, saying so at its start (the end
    may be masked away)."""
    if len(text) <= limit:
        return text
    return '[truncated to %d of %d characters] %s' % (limit, len(text),
                                                       text[:limit])


class MaskingFilter(logging.Filter):
    """Renders the message once, cut and masked, before any formatter."""

    def __init__(self, conf):
        super().__init__()
        self.conf = conf

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format must not hide the line
            message = '%s %% %r' % (record.msg, record.args)
        record.msg = mask(truncate(message, self.conf.log_line_max_length))
        record.args = None
        return True


class MaskingFormatter(logging.Formatter):
    """Wraps oslo.log's formatter; masks what it produced (tracebacks,
    context values). JSON lines are masked value by value, so the line stays
    valid JSON and escaped secrets are found."""

    def __init__(self, inner, json_lines):
        super().__init__()
        self.inner = inner
        self.json_lines = json_lines

    def format(self, record):
        text = self.inner.format(record)
        if not self.json_lines:
            return mask(text)
        try:
            doc = json.loads(text)
        except ValueError:
            return mask(text)
        return json.dumps(_mask_values(doc))

    def __getattr__(self, name):
        if name == 'inner':
            raise AttributeError(name)
        return getattr(self.inner, name)


def _is_secret_key(key):
    return isinstance(key, str) and key.lower().endswith(SECRET_KEYS)


def _mask_values(obj):
    if isinstance(obj, str):
        return mask(obj)
    if isinstance(obj, dict):
        return {k: (MASK if _is_secret_key(k) and v is not None
                    else _mask_values(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask_values(v) for v in obj]
    return obj


def setup(conf):
    """Configure logging from ``conf`` (oslo.log), masking on every handler.

    Called again on SIGHUP: oslo.log replaces the handlers, this wraps the
    new ones."""
    oslo_log.setup(conf, PROJECT)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter(conf))
        if handler.formatter is not None and not isinstance(
                handler.formatter, MaskingFormatter):
            handler.setFormatter(MaskingFormatter(
                handler.formatter, json_lines=conf.use_json))
    return logging.getLogger()


@contextlib.contextmanager
def request_context(request_id=None, instance_uuid=None):
    """Make the request's context current for this thread's log lines."""
    old = oslo_context.get_current()
    ctx = oslo_context.RequestContext(
        request_id=request_id or '-', resource_uuid=instance_uuid,
        overwrite=True)
    try:
        yield ctx
    finally:
        if old is not None:
            old.update_store()
        else:
            # oslo.context has no public "clear": its store is this local.
            oslo_context._request_store.context = None
