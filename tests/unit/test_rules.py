"""The monitor's alert rules, on numbers (no broker)."""

from __future__ import annotations

from services.monitor.rules import Observations, Thresholds, diff, evaluate, failure_counts
from shared.contracts import MetricSample

T = Thresholds(lag=10, failure_rate=0.5, failure_min=4, window_s=60, silent_s=30)


def sample(instance, at, ok=0, poison=0, exhausted=0, service="transcoder"):
    return MetricSample(
        service=service,
        instance=instance,
        time=at,
        messages={"transcoder": {"ok": ok, "poison": poison, "exhausted": exhausted}},
    )


def test_failure_rate_uses_the_window_and_sums_instances():
    obs = Observations()
    obs.add_sample(sample("a", 0, ok=100))  # before the window: the baseline
    obs.add_sample(sample("a", 50, ok=101, poison=3))
    obs.add_sample(sample("b", 55, ok=0, exhausted=2))  # a new instance: counted from zero
    assert failure_counts(obs, 100, 60) == {"transcoder": (5.0, 6.0)}
    firing = evaluate(obs, 100, T)
    assert ("task_failure_rate", "transcoder") in firing
    assert firing[("task_failure_rate", "transcoder")][2] == 5 / 6


def test_a_few_failures_under_the_minimum_do_not_fire():
    obs = Observations()
    obs.add_sample(sample("a", 50, poison=2))
    assert ("task_failure_rate", "transcoder") not in evaluate(obs, 60, T)


def test_a_restarted_process_counts_from_zero():
    obs = Observations()
    obs.add_sample(sample("a", 0, ok=50))
    obs.add_sample(sample("a", 70, ok=1, poison=5))  # counters went down: a restart
    assert failure_counts(obs, 80, 60)["transcoder"] == (5.0, 6.0)


def test_lag_dead_letters_and_silence():
    obs = Observations()
    obs.lag = {"transcoder": 11, "catalog": 3}
    obs.dead_letters = 2
    obs.seen("gateway", 100)
    obs.seen("thumbnailer", 50)
    firing = evaluate(obs, 100, T)
    assert set(firing) == {
        ("consumer_lag", "transcoder"),
        ("dead_letters", "DEADLETTER"),
        ("service_silent", "thumbnailer"),
    }


def test_diff_announces_changes_once_and_keeps_since():
    first, changes = diff({}, {("consumer_lag", "t"): ("warning", "m", 11)}, now=10)
    assert [(a.rule, state) for a, state in changes] == [("consumer_lag", "firing")]
    again, changes = diff(first, {("consumer_lag", "t"): ("warning", "m2", 12)}, now=20)
    assert changes == [] and again[("consumer_lag", "t")].since == 10 and again[("consumer_lag", "t")].value == 12
    cleared, changes = diff(again, {}, now=30)
    assert cleared == {} and [(a.rule, state) for a, state in changes] == [("consumer_lag", "resolved")]
