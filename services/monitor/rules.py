"""Alert rules over what the monitor observes (pure logic: no NATS, testable with numbers).

Rules: task_failure_rate (share of tasks that ended failed over a window, per consumer),
consumer_lag (messages waiting for a durable consumer), dead_letters (the dead-letter
stream is not empty), service_silent (a service sent neither a log nor a metric sample
for too long). Each firing alert is keyed by (rule, subject); `diff` turns two
evaluations into the changes to announce.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from shared.contracts import Alert, MetricSample

FAILED_OUTCOMES = ("poison", "exhausted")
FINAL_OUTCOMES = ("ok", "poison", "exhausted")


@dataclass
class Thresholds:
    # The service sets each field from the MonitorSettings field alert_<field>.
    lag: int = 100
    failure_rate: float = 0.5
    failure_min: int = 5
    window_s: float = 300.0
    silent_s: float = 60.0


@dataclass
class Observations:
    samples: dict[str, collections.deque] = field(default_factory=dict)  # instance -> samples
    last_seen: dict[str, float] = field(default_factory=dict)  # service -> time
    lag: dict[str, int] = field(default_factory=dict)  # durable consumer -> waiting
    dead_letters: int = 0

    def add_sample(self, sample: MetricSample, keep: int = 200) -> None:
        self.samples.setdefault(sample.instance, collections.deque(maxlen=keep)).append(sample)
        self.seen(sample.service, sample.time)

    def seen(self, service: str, at: float) -> None:
        self.last_seen[service] = max(at, self.last_seen.get(service, 0.0))


def failure_counts(obs: Observations, now: float, window_s: float) -> dict[str, tuple[float, float]]:
    """consumer -> (failed, ended) over the window, summed over every instance."""
    counts: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for samples in obs.samples.values():
        recent = [s for s in samples if s.time >= now - window_s]
        if not recent:
            continue
        older = [s for s in samples if s.time < now - window_s]
        base = older[-1] if older else None  # counters are cumulative: diff against the window start
        last = recent[-1]
        for consumer, outcomes in last.messages.items():
            before = base.messages.get(consumer, {}) if base else {}
            for outcome in FINAL_OUTCOMES:
                delta = outcomes.get(outcome, 0.0) - before.get(outcome, 0.0)
                if delta < 0:  # the process restarted: its counters began again at zero
                    delta = outcomes.get(outcome, 0.0)
                counts[consumer][1] += delta
                if outcome in FAILED_OUTCOMES:
                    counts[consumer][0] += delta
    return {consumer: (failed, ended) for consumer, (failed, ended) in counts.items()}


def evaluate(obs: Observations, now: float, t: Thresholds) -> dict[tuple[str, str], tuple[str, str, float]]:
    """(rule, subject) -> (severity, message, value) for every alert that should fire now."""
    firing: dict[tuple[str, str], tuple[str, str, float]] = {}
    for consumer, (failed, ended) in failure_counts(obs, now, t.window_s).items():
        if ended >= t.failure_min and failed / ended > t.failure_rate:
            rate = failed / ended
            firing[("task_failure_rate", consumer)] = (
                "critical",
                f"{failed:.0f} of {ended:.0f} tasks of {consumer} failed in the last {t.window_s:.0f}s ({rate:.0%})",
                rate,
            )
    for consumer, waiting in obs.lag.items():
        if waiting > t.lag:
            firing[("consumer_lag", consumer)] = (
                "warning",
                f"{waiting} messages wait for {consumer} (threshold {t.lag})",
                float(waiting),
            )
    if obs.dead_letters > 0:
        firing[("dead_letters", "DEADLETTER")] = (
            "warning",
            f"{obs.dead_letters} dead letters wait for inspection (vidmesh dlq list)",
            float(obs.dead_letters),
        )
    for service, at in obs.last_seen.items():
        if now - at > t.silent_s:
            firing[("service_silent", service)] = (
                "critical",
                f"{service} has sent nothing for {now - at:.0f}s",
                now - at,
            )
    return firing


def diff(
    before: dict[tuple[str, str], Alert], now_firing: dict[tuple[str, str], tuple[str, str, float]], now: float
) -> tuple[dict[tuple[str, str], Alert], list[tuple[Alert, str]]]:
    """The alerts firing after this evaluation, and the (alert, firing|resolved) changes."""
    current: dict[tuple[str, str], Alert] = {}
    changes: list[tuple[Alert, str]] = []
    for key, (severity, message, value) in now_firing.items():
        previous = before.get(key)
        since = previous.since if previous else now
        alert = Alert(rule=key[0], subject=key[1], severity=severity, message=message, since=since, value=value)
        current[key] = alert
        if previous is None:
            changes.append((alert, "firing"))
    for key, alert in before.items():
        if key not in now_firing:
            changes.append((alert, "resolved"))
    return current, changes
