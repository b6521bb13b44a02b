"""[images] options: where images come from and how disks are made."""

from oslo_config import cfg

from compute_agent.conf import base

group = cfg.OptGroup('images', title='Image and disk options')

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
    cfg.BoolOpt(
        'use_cow_images', default=True,
        deprecated_opts=[cfg.DeprecatedOpt('use_cow_images', group='DEFAULT')],
        help='Root disks are qcow2 overlays on the cached image; false makes '
             'raw copies.'),
    cfg.IntOpt(
        'download_timeout', default=300, min=1,
        help='Seconds an image download may stall before it fails.'),
    cfg.IntOpt(
        'download_retries', default=3, min=0,
        help='Retries of a failed (not missing) image download.'),
    cfg.IntOpt(
        'image_cache_manager_interval', default=2400, min=0,
        deprecated_opts=[cfg.DeprecatedOpt('image_cache_manager_interval',
                                           group='DEFAULT')],
        help='Seconds between passes that remove unused cached images '
             '(see remove_unused_base_images); 0 disables them.'),
    cfg.BoolOpt(
        'remove_unused_base_images', default=True,
        deprecated_opts=[cfg.DeprecatedOpt('remove_unused_base_images',
                                           group='DEFAULT')],
        help='Remove cached images (in <instances_path>/_base) that no '
             'instance disk uses.'),
    cfg.IntOpt(
        'remove_unused_original_minimum_age_seconds', default=86400, min=60,
        deprecated_opts=[cfg.DeprecatedOpt(
            'remove_unused_original_minimum_age_seconds', group='DEFAULT')],
        help='An unused cached image is removed only this many seconds '
             'after its last use, so images spawned now and then are not '
             'downloaded again each time.'),
]


def register(conf):
    base.register_group_opts(conf, group, opts)
