"""Logging: request_id and instance uuid on every line, never a secret.

``setup()`` configures the root logger from the command line (--debug,
--log-file, --log-json). ``request_context()`` binds a request's id and
instance uuid to the current thread so every line logged while serving it
carries them without each call site passing them along.
"""

import contextlib
import json
import logging
import logging.handlers
import re
import threading

_local = threading.local()

# Values of these keys, wherever they appear in a logged message, are masked.
SECRET_KEYS = ('auth_token', 'admin_password', 'rescue_password', 'password',
               'passwd', 'secret', 'transport_url')
_SECRET_RE = re.compile(
    r'''(?P<key>['"]?(?:_context_)?[A-Za-z_]*(?:%s)['"]?\s*[:=]\s*)'''
    r'''(?P<q>['"]?)(?P<value>[^'",}\s]*)(?P=q)''' % '|'.join(SECRET_KEYS),
    re.IGNORECASE)
_URL_PASSWORD_RE = re.compile(r'(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@')


def mask(text):
    """Mask secret values in free text (key=value, JSON, and URL passwords)."""
    text = _SECRET_RE.sub(lambda m: '%s%s***%s' % (m['key'], m['q'], m['q']), text)
    return _URL_PASSWORD_RE.sub(r'\g<pre>***@', text)


@contextlib.contextmanager
def request_context(request_id=None, instance_uuid=None):
    old = getattr(_local, 'ctx', {})
    _local.ctx = {'request_id': request_id, 'instance_uuid': instance_uuid}
    try:
        yield
    finally:
        _local.ctx = old


class ContextFilter(logging.Filter):
    """Adds request_id/instance_uuid (from the thread or extra=) and masks."""

    def filter(self, record):
        ctx = getattr(_local, 'ctx', {})
        for key in ('request_id', 'instance_uuid'):
            if getattr(record, key, None) is None:
                setattr(record, key, ctx.get(key))
        record.msg = mask(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return True


class TextFormatter(logging.Formatter):
    def format(self, record):
        record.ctx = '[%s %s]' % (record.request_id or '-',
                                  record.instance_uuid or '-')
        return super().format(record)


class JSONFormatter(logging.Formatter):
    def format(self, record):
        doc = {'time': self.formatTime(record), 'level': record.levelname,
               'logger': record.name, 'message': record.getMessage(),
               'request_id': record.request_id,
               'instance_uuid': record.instance_uuid}
        if record.exc_text:
            doc['exception'] = record.exc_text
        return json.dumps(doc)


def setup(debug=False, log_file=None, json_format=False):
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handler = (logging.handlers.WatchedFileHandler(log_file) if log_file
               else logging.StreamHandler())
    handler.addFilter(ContextFilter())
    handler.setFormatter(JSONFormatter() if json_format else TextFormatter(
        '%(asctime)s %(levelname)s %(name)s %(ctx)s %(message)s'))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ('amqp', 'kombu', 'stevedore'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
