"""The errors a user can fix by changing an input: a leaf module that every
layer may import."""


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


class DataError(ValueError):
    """A dataset, embedding file or run directory is missing or malformed."""


class RunError(DataError):
    """A directory named as a run's input is not a finished jaxrec run, or it
    lacks the output asked for."""
