"""The agent's errors: the classes a scheduler sees in failure replies.

Their bare class names and this module's name are part of the wire contract
(docs: protocol-errors): an oslo client raises ``RemoteError`` whose
``exc_type`` is the class name.
"""


class AgentError(Exception):
    """Base class; ``message`` is what goes on the wire."""

    msg_fmt = 'An unknown error occurred'

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                message = self.msg_fmt
        self.message = message
        super().__init__(message)

    def to_dict(self):
        return {'class': type(self).__name__, 'message': self.message}


class InvalidRequest(AgentError):
    """A request that fails validation; names the field and the reason."""

    msg_fmt = 'Invalid request: %(field)s: %(reason)s'

    def __init__(self, field, reason, uuid=None):
        self.field = field
        self.reason = reason
        self.uuid = uuid
        super().__init__(field=field, reason=reason)


class UnsupportedVersion(AgentError):
    msg_fmt = 'Unsupported RPC API version %(version)s (agent serves %(served)s)'


class InstanceNotFound(AgentError):
    msg_fmt = 'Instance %(uuid)s could not be found'


class InstanceInvalidState(AgentError):
    msg_fmt = ('Cannot %(action)s instance %(uuid)s while vm_state=%(vm_state)s '
               'task_state=%(task_state)s')


class ImageNotFound(AgentError):
    msg_fmt = 'Image %(image_id)s could not be found: %(reason)s'


class ImageChecksumMismatch(AgentError):
    msg_fmt = 'Image %(image_id)s checksum mismatch: expected %(expected)s, got %(actual)s'


class HypervisorUnavailable(AgentError):
    msg_fmt = 'Hypervisor at %(uri)s is unavailable: %(reason)s'


class VifPlugFailed(AgentError):
    msg_fmt = 'Failed to plug VIF %(vif_id)s: %(reason)s'


class VolumeAttachFailed(AgentError):
    msg_fmt = 'Failed to attach volume %(volume_id)s: %(reason)s'


class VolumeDetachFailed(AgentError):
    msg_fmt = 'Failed to detach volume %(volume_id)s: %(reason)s'


class VolumeNotFound(AgentError):
    msg_fmt = 'Instance %(uuid)s has no volume %(volume_id)s'


class InterfaceAttachFailed(AgentError):
    msg_fmt = 'Failed to attach interface %(vif_id)s: %(reason)s'


class InterfaceDetachFailed(AgentError):
    msg_fmt = 'Failed to detach interface %(vif_id)s: %(reason)s'


class InterfaceNotFound(AgentError):
    msg_fmt = 'Instance %(uuid)s has no interface %(vif_id)s'


class ImageUploadFailed(AgentError):
    msg_fmt = 'Failed to write image %(image_id)s: %(reason)s'


class GuestAgentUnavailable(AgentError):
    """No guest agent answered within its deadline; nothing waits longer."""

    msg_fmt = 'Guest agent of instance %(uuid)s is unavailable: %(reason)s'


class MigrationError(AgentError):
    """The migration failed; the guest runs on exactly one host, reported so."""

    msg_fmt = 'Migration of instance %(uuid)s failed: %(reason)s'


class MigrationPreCheckError(AgentError):
    """A pre-check refused the migration; nothing changed on either host."""

    msg_fmt = 'Migration of instance %(uuid)s refused: %(reason)s'


class GuestXMLInvalid(AgentError):
    """The agent built XML libvirt's schema rejects: a bug, never bad input."""

    msg_fmt = 'Generated domain XML does not validate: %(reason)s'


class ConfigError(AgentError):
    msg_fmt = 'Invalid configuration: [%(group)s] %(option)s: %(reason)s'


# Classes a failure reply may name; anything else is reported as its own
# class name but is not re-raisable by name on the client side.
WIRE_ERRORS = {cls.__name__: cls for cls in (
    InvalidRequest, UnsupportedVersion, InstanceNotFound, InstanceInvalidState,
    ImageNotFound, ImageChecksumMismatch, HypervisorUnavailable, VifPlugFailed,
    VolumeAttachFailed, VolumeDetachFailed, VolumeNotFound,
    InterfaceAttachFailed, InterfaceDetachFailed, InterfaceNotFound)}
