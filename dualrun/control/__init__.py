"""The fleet's shared routing state: every process of every host applies the same decisions.

``Dispatcher(..., control=SQLiteControl(path))`` (one host, standard library) or
``control=OpenFeatureControl(client, flag_key)`` (many hosts, through any OpenFeature provider).
A background agent per process reads the state and applies it; the routed call never does I/O.
"""

from dualrun.control.evidence import evidence_from_logs
from dualrun.control.openfeature import OpenFeatureControl
from dualrun.control.rollout import FleetRollout
from dualrun.control.sqlite import FleetStatus, ProcessStatus, SQLiteControl
from dualrun.control.state import ControlState

__all__ = [
    "ControlState",
    "FleetRollout",
    "FleetStatus",
    "OpenFeatureControl",
    "ProcessStatus",
    "SQLiteControl",
    "evidence_from_logs",
]
