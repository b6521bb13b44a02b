"""Planning a request once, before anything is touched.

``Planner`` turns a validated request, or the stored request of an
instance (its journal record's ``spec``), into the ``plan.GuestPlan`` the
driver executes: VIFs checked by their drivers, image locations checked,
the builder's guest, the domain XML checked against libvirt's schema. It
has no side effects, so a request it refuses leaves everything as it was.
"""

from compute_agent import exception
from compute_agent.virt import builder
from compute_agent.virt import plan as plan_mod
from compute_agent.virt import schema


class Planner:

    def __init__(self, conf, vif_drivers, image_cache):
        self.conf = conf
        self.vif_drivers = vif_drivers
        self.image_cache = image_cache

    # -- checks ---------------------------------------------------------------
    def check_vifs(self, instance, network_info):
        """(driver, vif) pairs after every driver's checks; InvalidRequest."""
        try:
            return self.vif_drivers.validate_all(network_info or [])
        except exception.VifPlugFailed as e:
            raise exception.InvalidRequest(
                'network_info', e.message, uuid=instance['uuid']) from None

    def check_location(self, image_meta, field, uuid=None):
        """Refuse a disallowed image location (InvalidRequest on ``field``)."""
        if not image_meta or not image_meta.get('location'):
            return      # from the image store: always allowed
        try:
            self.image_cache.resolve_url(image_meta)
        except exception.InvalidRequest as e:
            raise exception.InvalidRequest(
                e.field.replace('image_meta', field, 1), e.reason,
                uuid=uuid) from None

    # -- plans ----------------------------------------------------------------
    def spawn(self, instance, image_meta, network_info=(), block_device_info=None,
              admin_password=None, injected_files=()):
        """The plan of a spawn request."""
        vifs = self.check_vifs(instance, network_info)
        self.check_location(image_meta, 'image_meta', instance['uuid'])
        plan = self._build(instance, image_meta, network_info, block_device_info,
                           vifs)
        plan.config_drive = plan_mod.ConfigDrive(
            list(network_info or ()), admin_password, list(injected_files or ()))
        return plan

    def guest(self, spec):
        """The instance's own guest, from its stored spawn request (a hard
        reboot redefines it, so a changed policy applies)."""
        return self.spawn(spec['instance'], spec['image_meta'],
                          spec['network_info'], spec['block_device_info'])

    def rescue(self, spec, rescue_image_meta=None, rescue_password=None):
        """The rescue guest of an instance: the rescue image first, its own
        root disk second, then its volumes, a config drive of its own
        (``disk.config.rescue``, carrying ``rescue_password``)."""
        instance = spec['instance']
        self.check_location(rescue_image_meta, 'rescue_image_meta',
                            instance['uuid'])
        network_info = spec['network_info']
        vifs = self.check_vifs(instance, network_info)
        # Volumes stay attached, after the rescue disk and the root.
        plan = self._build(instance, spec['image_meta'], network_info,
                           spec['block_device_info'], vifs,
                           rescue=True, rescue_image_meta=rescue_image_meta)
        plan.config_drive = plan_mod.ConfigDrive(list(network_info or ()),
                                                 rescue_password, [])
        return plan

    def rebuild(self, spec, image_meta, admin_password=None, injected_files=(),
                preserve_ephemeral=False):
        """``(plan, new spec)`` of a rebuild onto ``image_meta``.

        The new spec is the stored request with ``image_ref`` and
        ``image_meta`` of the new image: the same uuid, name, VIFs with
        their filters, volumes and flavor. The plan is that guest, its
        ``files`` only those the rebuild makes anew: the root disk, the
        config drive (``admin_password`` and ``injected_files`` on it), the
        swap and kernel files, and the ephemeral disks unless
        ``preserve_ephemeral``.
        """
        instance = dict(spec['instance'], image_ref=image_meta['id'])
        new_spec = dict(spec, instance=instance, image_meta=image_meta)
        plan = self.spawn(instance, image_meta, spec['network_info'],
                          spec['block_device_info'], admin_password,
                          injected_files)
        if not any(f.kind in ('root', 'iso') for f in plan.files):
            raise exception.InvalidRequest(
                'image_meta', 'the root disk is a volume: rebuild re-creates '
                'only a local root disk', uuid=instance['uuid'])
        if preserve_ephemeral:
            plan.files = [f for f in plan.files if f.kind != 'ephemeral']
        return plan, new_spec
    def resize(self, spec, old_flavor, new_flavor, files=None):
        """The ``plan.ResizePlan`` of an instance whose stored request
        ``spec`` runs ``old_flavor``, to ``new_flavor``.

        ``files`` are the file lists of a resize planned before (from the
        journal record: confirm and revert act on what the resize did);
        without them they are decided here, and a flavor that would shrink
        the root or ephemeral disk is InvalidRequest naming the field.
        """
        instance = spec['instance']
        if files is None:
            for key in ('root_gb', 'ephemeral_gb'):
                if new_flavor.get(key, 0) < old_flavor.get(key, 0):
                    raise exception.InvalidRequest(
                        'flavor.' + key, 'must not be smaller than the '
                        'current flavor\'s: a resize never shrinks a disk',
                        uuid=instance['uuid'])
        old_spec = _with_flavor(spec, old_flavor)
        new_spec = _with_flavor(spec, new_flavor)
        old, new = self.guest(old_spec), self.guest(new_spec)
        if files is None:
            files = _resized_files(old.files, new.files)
        return plan_mod.ResizePlan(old=old, new=new, old_spec=old_spec,
                                   new_spec=new_spec, **files)

    def vifs(self, spec):
        """(driver, vif) pairs of an instance's stored network_info."""
        return self.vif_drivers.for_network_info(spec['network_info'] or [])

    def _build(self, instance, image_meta, network_info, block_device_info, vifs,
               **rescue):
        plan = builder.build(self.conf, instance, image_meta, network_info or [],
                             block_device_info, vifs=vifs, **rescue)
        schema.validate_domain(plan.domain.node)
        return plan


def _with_flavor(spec, flavor):
    return dict(spec, instance=dict(spec['instance'], flavor=flavor))


# Disks a flavor sizes: their content is kept and grown, or (swap) made anew.
_GROWN_KINDS = ('root', 'ephemeral')


def _resized_files(old_files, new_files):
    """Which files a resize from ``old_files`` to ``new_files`` touches."""
    old = {f.name: f for f in old_files}
    new = {f.name: f for f in new_files}
    out = {'grow': [], 'replace': [], 'create': [], 'drop': []}
    for name, f in new.items():
        before = old.get(name)
        if before is None:
            out['create'].append(name)
        elif f.size_bytes == before.size_bytes and f.fmt == before.fmt:
            continue
        elif f.kind in _GROWN_KINDS:
            out['grow'].append(name)
        else:
            out['replace'].append(name)
    out['drop'] = [name for name in old if name not in new]
    return out
