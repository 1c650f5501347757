"""The one exception type for input the VRE refuses: its message tells the user what to fix."""


class VREError(ValueError):
    """Bad input or a refused action. CLI and web layers show the message as is."""


class NotFound(VREError):
    """A named thing (user, project, dataset, profile) does not exist."""


class Conflict(VREError):
    """The name or thing is taken, or busy with another change (HTTP 409)."""
