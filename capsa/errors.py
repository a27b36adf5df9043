"""The one error hierarchy of capsa: every failure a user can cause or meet.

Imports nothing from capsa and nothing heavy; the CLIs catch CapsaError once and print
`error.line()` (or a JSON log line), never a traceback.
"""


class CapsaError(Exception):
    """A failure explained in one line: what, where (field or file), and the fix."""

    exit_code = 1

    def __init__(self, message, field=None, hint=None):
        Exception.__init__(self, message)
        self.message = message
        self.field = field
        self.hint = hint

    def line(self):
        text = self.message
        if self.field:
            text = self.field + ": " + text
        if self.hint:
            text = text + " (" + self.hint + ")"
        return text

    def __str__(self):
        return self.line()


class UsageError(CapsaError):
    """A bad command line: unknown flag, missing argument, bad container id."""

    exit_code = 2


class ConfigError(CapsaError):
    """A bad config.json, process file or resources file; `field` is the JSON path."""


class StateError(CapsaError):
    """A container that does not exist, exists already, or is in the wrong status."""


class KernelError(CapsaError):
    """A syscall or kernel file write that failed; carries errno and what was asked."""

    def __init__(self, message, errno=0, field=None, hint=None):
        CapsaError.__init__(self, message, field, hint)
        self.errno = errno


class ImageError(CapsaError):
    """A bad image reference, archive, layer, digest, registry answer or store state."""


class NetworkError(CapsaError):
    """A bad network name, subnet, port, or a failed CNI plugin."""


class ContainerError(CapsaError):
    """A failure reported by the container process before it ran the user's program."""
