"""What the simulated source simulates: the ``--simulated.*`` settings and their parsing.

Apart from the source (:mod:`guestload.sources.simulated`), so that the settings and the
command line depend on no source: the simulation's description is data, its VMs and their
draws stay with the source.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final


class AgentBehaviour(enum.StrEnum):
    """How a simulated VM's guest agent answers."""

    HEALTHY = "healthy"
    ABSENT = "absent"
    """No agent channel: ``not_configured``."""
    OLD = "old"
    """An agent of QEMU :data:`~guestload.sources.simulated.OLD_AGENT_QEMU`: queries of later
    versions (the load's) are ``unsupported``."""
    SLOW = "slow"
    """Answers after half the agent timeout."""
    HUNG = "hung"
    """Never answers: the call returns ``timeout`` when the agent timeout expires."""


AGENT_BEHAVIOUR_KEY: Final = "guestload.simulated.agent"
"""The metadata key under which a simulated domain names its agent's
:class:`AgentBehaviour`, as a real domain's metadata describes the domain."""

_FAILURES = (AgentBehaviour.ABSENT, AgentBehaviour.OLD, AgentBehaviour.SLOW, AgentBehaviour.HUNG)
_SHARE = re.compile(r"(\d+(?:\.\d+)?)(%?)")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentFailures:
    """Shares of VMs (0 to 1) whose agent misbehaves; the rest are healthy."""

    absent: float = 0.0
    old: float = 0.0
    slow: float = 0.0
    hung: float = 0.0

    def __post_init__(self) -> None:
        shares = [getattr(self, b.value) for b in _FAILURES]
        if any(not 0.0 <= share <= 1.0 for share in shares):
            raise ValueError("each share must be between 0% and 100%")
        if sum(shares) > 1.0 + 1e-9:
            raise ValueError("the shares add up to more than 100%")

    @classmethod
    def parse(cls, text: str) -> AgentFailures:
        """Parse ``absent=2%,old=3%,slow=5%,hung=10%`` (shares as percentages or fractions).

        An empty text or ``none`` means every agent is healthy.
        """
        stripped = text.strip()
        if stripped in ("", "none"):
            return cls()
        shares: dict[str, float] = {}
        for part in stripped.split(","):
            key, sep, value = part.strip().partition("=")
            match = _SHARE.fullmatch(value.strip())
            names = [b.value for b in _FAILURES]
            if not sep or key.strip() not in names or match is None:
                raise ValueError(
                    f"not a failure share: {part.strip()!r} (use e.g. absent=2%,hung=10%; "
                    f"kinds: {', '.join(names)})"
                )
            number = float(match.group(1))
            shares[key.strip()] = number / 100.0 if match.group(2) else number
        return cls(**shares)

    def behaviour(self, draw: float) -> AgentBehaviour:
        """The behaviour of a VM whose uniform draw in [0, 1) is ``draw``."""
        threshold = 0.0
        for behaviour in _FAILURES:
            threshold += getattr(self, behaviour.value)
            if draw < threshold:
                return behaviour
        return AgentBehaviour.HEALTHY

    def __str__(self) -> str:
        parts = [
            f"{b.value}={getattr(self, b.value) * 100:g}%"
            for b in _FAILURES
            if getattr(self, b.value) > 0
        ]
        return ",".join(parts) or "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class Simulation:
    """What to simulate; the ``--simulated.*`` flags."""

    vms: int = 100
    seed: int = 1
    agent_failures: AgentFailures = field(default_factory=AgentFailures)
    churn_per_minute: float = 0.0
    """VMs replaced per minute: one stops and a new one starts (0: a fixed population)."""
    agent_latency_seconds: float = 0.0
    """How long a healthy agent takes to answer (a real one: ~1-3 ms)."""
    agent_flaps_per_minute: float = 0.0
    """Agents per minute that disconnect and reconnect
    :data:`~guestload.sources.simulated.AGENT_AWAY_STEPS` later (0: none)."""
