"""dualrun: two versions of the same code in one process, chosen call by call."""

from dualrun import html, render  # noqa: F401  (they register Report.to_text/_markdown/_html)
from dualrun.compare import Difference
from dualrun.context import RequestContext, context, current
from dualrun.control import FleetRollout, OpenFeatureControl, SQLiteControl
from dualrun.dispatcher import Dispatcher
from dualrun.errors import (
    ContextRequiredError,
    DualrunWarning,
    TargetNotFoundError,
    VersionLoadError,
    VersionModuleNotFoundError,
)
from dualrun.eventlog import EventLog
from dualrun.gate import Decision, Gate
from dualrun.intercept import Interception
from dualrun.loading import INSTALLED, Version, VersionPair, load, load_version
from dualrun.policy import Canary, Fixed, Policy, stable_bucket
from dualrun.recording import Recording
from dualrun.report import Report
from dualrun.rollout import Rollout, RolloutStatus
from dualrun.shadow import Shadow
from dualrun.sideeffects import side_effect
from dualrun.status import LoadedVersion, Status

__all__ = [
    "INSTALLED",
    "Canary",
    "ContextRequiredError",
    "Decision",
    "Difference",
    "Dispatcher",
    "DualrunWarning",
    "EventLog",
    "Fixed",
    "FleetRollout",
    "Gate",
    "Interception",
    "LoadedVersion",
    "OpenFeatureControl",
    "Policy",
    "Recording",
    "Report",
    "RequestContext",
    "Rollout",
    "RolloutStatus",
    "SQLiteControl",
    "Shadow",
    "Status",
    "TargetNotFoundError",
    "Version",
    "VersionLoadError",
    "VersionModuleNotFoundError",
    "VersionPair",
    "context",
    "current",
    "load",
    "load_version",
    "side_effect",
    "stable_bucket",
]
