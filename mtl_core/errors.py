"""Exception types of the project.

Every error a user can cause with bad input is one of these, with a one-line
message that names the file, key or column and what was expected. The command
line prints that line and exits non-zero instead of showing a traceback.
"""


class MTLError(Exception):
    """Base class of every error raised on purpose by this project."""


class ConfigError(MTLError):
    """A configuration file or override is missing, malformed or inconsistent."""


class DataError(MTLError):
    """A data file, column or target cannot be used as configured."""


class NonFiniteLossError(MTLError):
    """Training produced a NaN or infinite loss; the run cannot continue."""


class SearchError(MTLError):
    """The hyper-parameter search produced no usable trial."""


class DriftError(MTLError):
    """A scoring batch drifted from the training inputs, and the run was told to fail on it."""
