"""[images] options: where images come from and how disks are made."""

from oslo_config import cfg
from oslo_config import types

from compute_agent.conf import base

group = cfg.OptGroup('images', title='Image and disk options')


def _nova(name, default_name=None):
    """nova's [image_cache] name and its older [DEFAULT] one."""
    return [cfg.DeprecatedOpt(name, group='image_cache'),
            cfg.DeprecatedOpt(default_name or name, group='DEFAULT')]


class Interval(types.Integer):
    """Seconds >= 0; nova's -1 ("disabled") is read as 0, ours."""

    def __init__(self):
        super().__init__(min=-1)

    def __call__(self, value):
        return max(0, super().__call__(value))

opts = [
    cfg.StrOpt(
        'image_store_url', default='file:///var/lib/compute-agent/images',
        help='Base URL of the image store (file:// or http(s)://); image '
             '<id> is fetched from <base>/<id>.'),
    cfg.ListOpt(
        'allowed_schemes', default=['file', 'http', 'https'],
        item_type=cfg.types.String(choices=['file', 'http', 'https']),
        help='URL schemes an image "location" may use; a file:// location '
             'must also lie inside the image store.'),
    cfg.IntOpt(
        'download_timeout', default=300, min=1,
        help='Seconds an image download may stall before it fails.'),
    cfg.IntOpt(
        'upload_timeout', default=300, min=1,
        help='Seconds an upload of a snapshot to an http(s):// image store '
             'may stall before it fails (ImageUploadFailed).'),
    cfg.IntOpt(
        'download_retries', default=3, min=0,
        help='Retries of a failed (not missing) image download.'),
    cfg.Opt(
        'image_cache_manager_interval', default=2400,
        type=Interval(),
        deprecated_opts=_nova('manager_interval',
                              'image_cache_manager_interval'),
        help='Seconds between passes that remove unused cached images '
             '(see remove_unused_base_images); 0 or -1 (nova\'s "disabled") '
             'disables them.'),
    cfg.BoolOpt(
        'remove_unused_base_images', default=True,
        deprecated_opts=_nova('remove_unused_base_images'),
        help='Remove cached images (in <instances_path>/_base) that no '
             'instance disk uses; false keeps every cached image.'),
    cfg.IntOpt(
        'remove_unused_original_minimum_age_seconds', default=86400, min=60,
        deprecated_opts=_nova('remove_unused_original_minimum_age_seconds'),
        help='An unused cached image is removed only this many seconds '
             'after its last use, so images spawned now and then are not '
             'downloaded again each time.'),
]


def register(conf):
    base.register_group_opts(conf, group, opts)
