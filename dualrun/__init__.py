"""dualrun: two versions of the same code in one process, chosen call by call."""

from dualrun.errors import DualrunWarning, TargetNotFoundError, VersionLoadError
from dualrun.loading import Version, VersionPair, load, load_version

__all__ = [
    "DualrunWarning",
    "TargetNotFoundError",
    "Version",
    "VersionLoadError",
    "VersionPair",
    "load",
    "load_version",
]
