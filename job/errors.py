"""The one exception type users see: a one-line message that names the fix."""


class JobError(Exception):
    """A user-facing error. The CLI prints it as one line and exits non-zero."""

    exit_code = 2


class IncompleteError(JobError):
    """Work that may still arrive (shards still running); `--wait` polls on this one."""
