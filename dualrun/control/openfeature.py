"""The fleet's state from an OpenFeature flag, for fleets across hosts (extra ``[openfeature]``).

The flag is an object flag whose value is the state as JSON (the fields of
:class:`~dualrun.control.ControlState`, e.g. ``{"mode": "canary", "percent": 5, "salt": "q3"}``),
served by any OpenFeature provider: flagd, Unleash, LaunchDarkly, Flagsmith... Each process
evaluates it on its agent's thread, when the provider reports a configuration change and also
every ``poll_interval`` seconds (some providers, flagd's file mode among them, may not emit the
event). An evaluation that fails (provider error, a value that is not a valid state) keeps the
last good state in force and is counted; it never reaches a routed call.

The percent is bucketed by dualrun's own stable hash of ``salt:key``, not by the provider's
targeting: the provider says which share serves new, dualrun picks the same keys for that share
in every process on every host, and raising the percent only moves keys from old to new.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from dualrun import checks
from dualrun.control.state import ControlState, from_dict

if TYPE_CHECKING:
    from dualrun.control.agent import Agent, FleetStore
    from dualrun.dispatcher import Dispatcher


class FlagError(RuntimeError):
    """The provider could not evaluate the flag (its error code and message)."""


class OpenFeatureControl:
    """The state from the object flag ``flag_key`` of an OpenFeature ``client``.

    ``poll_interval``: seconds between reads of the flag. ``store``: optionally a
    :class:`~dualrun.SQLiteControl` on the same host where the processes
    also report what they applied and publish their evidence (OpenFeature itself has no place
    for either).
    """

    def __init__(
        self,
        client: Any,
        flag_key: str,
        *,
        poll_interval: float = 0.5,
        store: FleetStore | None = None,
    ) -> None:
        if not callable(getattr(client, "get_object_details", None)):
            raise ValueError(
                f"client is an OpenFeature client (openfeature.api.get_client()), got {client!r}"
            )
        if not isinstance(flag_key, str) or not flag_key:
            raise ValueError(f"flag_key is the name of an object flag, got {flag_key!r}")
        self.client = client
        self.flag_key = flag_key
        self.poll_interval = checks.seconds(poll_interval, "poll_interval")
        self.store = store
        self.errors = 0  # evaluations that failed
        self.last_error: str | None = None
        self._version = 0
        self._last_text: str | None = None
        self._state: ControlState | None = None

    def __repr__(self) -> str:
        return f"OpenFeatureControl(flag {self.flag_key!r})"

    def read_state(self) -> ControlState:
        """Evaluate the flag; raises (for the agent to count) if it cannot be used."""
        try:
            details = self.client.get_object_details(self.flag_key, {})
            error = getattr(details, "error_code", None)
            if error is not None:
                raise FlagError(
                    f"flag {self.flag_key!r}: {getattr(error, 'value', error)}: "
                    f"{getattr(details, 'error_message', None) or 'no message'}"
                )
            value = details.value
            if not isinstance(value, dict):
                raise ValueError(f"flag {self.flag_key!r} is not an object: {value!r}")
            text = json.dumps(value, sort_keys=True)
            if self._state is None or text != self._last_text:
                state = from_dict(value)
                # A "version" in the flag is used as is (the same in every process); without
                # one, this process counts the changes it has seen.
                self._version = state.version if "version" in value else self._version + 1
                self._last_text = text
                self._state = state.with_changes(version=self._version)
            return self._state
        except Exception as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise

    def attach(self, dispatcher: Dispatcher) -> Agent:
        """Called by ``Dispatcher(..., control=this)``: the agent of that ``dispatcher`` polls
        the flag, and is woken
        by the provider's configuration-changed events."""
        from openfeature.event import ProviderEvent

        from dualrun.control.agent import Agent

        agent = Agent(dispatcher, self, store=self.store)

        def changed(details: Any) -> None:
            agent.wake()

        event = ProviderEvent.PROVIDER_CONFIGURATION_CHANGED
        self.client.add_handler(event, changed)
        agent.on_close.append(lambda: self.client.remove_handler(event, changed))
        return agent
