"""User-facing errors: each is one line that names the file or field at fault and, where known, the fix."""


class MdpError(Exception):
    """An error the CLI prints as a single line (no traceback) and exits non-zero on."""


class SchemaError(MdpError):
    """An artifact on disk does not match its schema, or does not belong with the other inputs."""


class InfeasibleBudgetError(MdpError):
    """The latency budget is below the smallest latency any allowed configuration reaches."""
