"""The one exception type a user can cause; the CLI turns it into a single line and exit code 2."""


class DigitsError(Exception):
    """A problem the user can fix: bad parameter, missing or corrupt file, no network.

    The message names the thing at fault and what to do about it.
    """


class DataError(DigitsError):
    """Raw or prepared data is missing, unreachable, corrupt or fails validation."""


class TrainingDiverged(DigitsError):
    """A training run produced a non-finite loss; the trial is failed, the sweep goes on."""


class DiskFull(DigitsError):
    """A write failed because the disk (or the quota) is full; retrying will not help."""
