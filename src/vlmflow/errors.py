"""The one exception type users see: its message is a single line that names the fix."""


class VlmflowError(Exception):
    """A failure caused by input or set-up, reported without a traceback by the CLI."""
