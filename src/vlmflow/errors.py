"""The one exception type users see: its message is a single line that names the fix; and the
one warning type, a single line where vlmflow goes on but the user should know."""


class VlmflowError(Exception):
    """A failure caused by input or set-up, reported without a traceback by the CLI."""


class VlmflowWarning(UserWarning):
    """A one-line notice (e.g. a model loaded through the generic resolver); the CLI prints it
    as `vlmflow COMMAND: warning: MESSAGE`."""
