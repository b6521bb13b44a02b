"""Image downloads log their progress at INFO (images/progress.py)."""

import logging

from compute_agent.images import progress

try:
    from tests.unit.test_images import make_conf, new_cache, put_image
except ImportError:      # run from inside tests/unit
    from test_images import make_conf, new_cache, put_image

MiB = progress.MiB


def test_a_real_download_logs_every_ten_percent(tmp_path, caplog):
    cache = new_cache(make_conf(tmp_path))
    put_image(tmp_path, 'big', b'\0' * (20 * MiB))     # 20 chunks of 1 MiB
    with caplog.at_level(logging.INFO, logger='compute_agent.images'):
        cache.fetch('big')
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith('Downloading image big')]
    assert [line.split(': ')[1].split(' ')[0] for line in lines] == [
        '%d%%' % p for p in range(10, 100, 10)]
    assert all(r.levelno == logging.INFO for r in caplog.records
               if r.getMessage().startswith('Downloading'))
    assert 'of 20.0 MiB' in lines[0] and 'MiB/s' in lines[0]


def test_unknown_size_logs_every_step_of_bytes(caplog):
    log = logging.getLogger('test.progress')
    p = progress.DownloadProgress('img', None, step_bytes=3 * MiB,
                                  clock=iter(range(100)).__next__, log=log)
    with caplog.at_level(logging.INFO, logger='test.progress'):
        for _ in range(10):
            p.update(MiB)
    assert p.lines == 3
    assert [r.getMessage().split(': ')[1].split(' (')[0]
            for r in caplog.records] == ['3.0 MiB', '6.0 MiB', '9.0 MiB']


def test_one_big_chunk_logs_once_not_per_step(caplog):
    log = logging.getLogger('test.progress')
    p = progress.DownloadProgress('img', 100 * MiB, log=log)
    with caplog.at_level(logging.INFO, logger='test.progress'):
        p.update(55 * MiB)
        p.update(45 * MiB)          # finished: the cache logs that
    assert p.lines == 1
    assert '55%' in caplog.records[0].getMessage()
