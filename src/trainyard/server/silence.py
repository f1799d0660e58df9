"""When many workers fall silent at once, the control plane is the likelier fault (pure; no I/O).

A worker is declared dead when its heartbeats stop, and its attempts end LOST. But heartbeats also
stop arriving when the control plane cannot take them: an overloaded replica, a starved event loop,
a database or network outage on its side. Then a fifth of a healthy fleet can go silent together,
and declaring it dead throws away the work of every job on it. So, as Kubernetes' node lifecycle
controller stops evicting when most of a zone's nodes go NotReady together, a sweep that finds many
workers silent at once (``MIN_WORKERS`` or more, and more than ``SHARE`` of the fleet) holds their
declaration. The hold is bounded: a mass silence that lasts ``hold_s`` is taken as real (a rack or
a zone lost), and they are declared dead then. A few silent workers among a beating fleet are
declared dead at once, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_WORKERS = 20
"""Fewer silent workers than this are never held: a small fleet's lost machine is just lost."""
SHARE = 0.10
"""Above this share of the live fleet silent at once, the silence is taken as the control plane's."""


@dataclass
class MassSilence:
    """The hold over one reconciler's sweeps: ``hold(silent, fleet, now)`` on each."""

    hold_s: float
    since: float | None = None
    """When the current mass silence was first seen (None: none now)."""

    def hold(self, silent: int, fleet: int, now: float) -> bool:
        """Whether to hold the declaration of ``silent`` of ``fleet`` live workers in this sweep."""
        if silent < MIN_WORKERS or silent <= SHARE * fleet:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since < self.hold_s
