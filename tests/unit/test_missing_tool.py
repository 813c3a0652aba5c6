"""The rule every test tool goes through: skip outside CI, fail with CI=true."""

from __future__ import annotations

import pytest

from tests.conftest import missing_tool


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_with_ci_set_a_missing_tool_fails_the_test(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true: a missing tool fails the run"):
        missing_tool("frobnicator", "apt-get install frobnicator")


def test_without_ci_a_missing_tool_skips_with_how_to_install_it(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.warns(UserWarning), pytest.raises(pytest.skip.Exception, match="apt-get install frobnicator"):
        missing_tool("frobnicator", "apt-get install frobnicator")
