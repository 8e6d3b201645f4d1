"""User-facing errors: one clear line naming the file or value and the problem."""


class McfastError(Exception):
    """An error caused by input (file, value, option), shown to users as one line."""


class InputError(McfastError, ValueError):
    """Bad input data or argument value."""


class CheckpointError(McfastError):
    """A checkpoint that is missing, corrupt, or made for another architecture."""


class McfastWarning(UserWarning):
    """Input used on an assumption (or left out) that the user should know about; the message names
    the files. The CLI prints these as one line, ``mcfast CMD: warning: ...``."""
