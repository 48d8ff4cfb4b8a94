"""The retry policy: exponential backoff with jitter, then the dead letters. Pure code.

After the n-th failed attempt of an entry the next one waits
``min(max_interval_s, initial_s * factor ** (n - 1))``, shortened by up to ``jitter`` of
itself (so deliveries that failed together do not all come back in the same instant, and the
wait never exceeds ``max_interval_s``). The entry goes to the dead letters when it has failed
``max_attempts`` times, or when it is ``max_age_s`` old; the last retry is moved forward to
that deadline so the final attempt happens at it. 0 means unlimited for both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from broker.errors import ConfigError

DEFAULT_INITIAL_S = 1.0
DEFAULT_FACTOR = 2.0
DEFAULT_MAX_INTERVAL_S = 300.0
DEFAULT_MAX_ATTEMPTS = 0  # unlimited: retry until max_age_s
DEFAULT_MAX_AGE_S = 86400.0
DEFAULT_JITTER = 0.2


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Try again at ``at`` (seconds since the epoch)."""

    at: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Move the entry to the dead letters; ``reason`` says which limit was reached."""

    reason: str


Decision = RetryAt | GiveUp


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-destination retry settings (config ``retry:``)."""

    initial_s: float = DEFAULT_INITIAL_S
    factor: float = DEFAULT_FACTOR
    max_interval_s: float = DEFAULT_MAX_INTERVAL_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_age_s: float = DEFAULT_MAX_AGE_S
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.initial_s) and self.initial_s >= 0):
            problems.append(f"initial_s: found {self.initial_s!r}; expected a number >= 0")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            problems.append(f"factor: found {self.factor!r}; expected a number >= 1")
        if not (math.isfinite(self.max_interval_s) and self.max_interval_s >= self.initial_s):
            problems.append(
                f"max_interval_s: found {self.max_interval_s!r}; expected a number >= initial_s"
            )
        if self.max_attempts < 0:
            problems.append(
                f"max_attempts: found {self.max_attempts!r}; expected 0 (unlimited) or more"
            )
        if not (math.isfinite(self.max_age_s) and self.max_age_s >= 0):
            problems.append(f"max_age_s: found {self.max_age_s!r}; expected 0 (unlimited) or more")
        if not 0 <= self.jitter <= 1:
            problems.append(f"jitter: found {self.jitter!r}; expected a fraction from 0 to 1")
        if problems:
            raise ConfigError("retry: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "retry") -> RetryPolicy:
        """Build from a config mapping; raises :class:`ConfigError` naming the bad key."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: found {type(data).__name__}; expected a mapping")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown key; expected one of {', '.join(known)}")
            wanted = int if key == "max_attempts" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{key}: found {value!r}; expected a number")
            if wanted is int and value != int(value):
                raise ConfigError(f"{where}.{key}: found {value!r}; expected a whole number")
            values[key] = wanted(value)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}{str(exc).removeprefix('retry')}") from None

    def base_delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failure, before jitter (attempts >= 1)."""
        exponent = max(0, attempts - 1)
        if self.initial_s == 0 or self.factor == 1:
            return self.initial_s
        # factor ** exponent overflows a float near exponent 1000; stop at the cap before.
        if exponent >= math.log(self.max_interval_s / self.initial_s, self.factor):
            return self.max_interval_s
        return min(self.max_interval_s, self.initial_s * self.factor**exponent)

    def delay(self, attempts: int, rand: float) -> float:
        """The jittered wait: ``base_delay * (1 - jitter * rand)``, ``rand`` in [0, 1)."""
        return self.base_delay(attempts) * (1.0 - self.jitter * rand)

    def decide(self, attempts: int, created_at: float, now: float, rand: float) -> Decision:
        """After the ``attempts``-th failed attempt at ``now`` of an entry queued at
        ``created_at``: when to try again, or give up."""
        if self.max_attempts and attempts >= self.max_attempts:
            return GiveUp(f"gave up after {attempts} attempts (max_attempts {self.max_attempts})")
        at = now + self.delay(attempts, rand)
        if self.max_age_s:
            deadline = created_at + self.max_age_s
            if now >= deadline:
                return GiveUp(
                    f"gave up after {attempts} attempts: older than max_age_s {self.max_age_s:g}"
                )
            at = min(at, deadline)
        return RetryAt(at)


__all__ = ["Decision", "GiveUp", "RetryAt", "RetryPolicy"]
