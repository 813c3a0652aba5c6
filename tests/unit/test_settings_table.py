"""The README's configuration table against the settings classes: the same variables, and
where the table gives a default, the one the classes have."""

from __future__ import annotations

import re
from pathlib import Path

from tests.settings import ROOT, variables

# Read by the OpenTelemetry SDK, not by a settings class.
NOT_SETTINGS = ("OTEL_",)


def configuration_table() -> list[tuple[list[str], str]]:
    """(variables, default cell) for each row of the README's `## Configuration` table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        if len(cells) >= 3 and names:
            rows.append((names, cells[1]))
    assert len(rows) > 20, "the README's configuration table was not found"
    return rows


def test_the_table_lists_every_variable_the_settings_read_and_no_other():
    documented = {name for names, _ in configuration_table() for name in names}
    read = set(variables())
    assert not read - documented, (
        f"read by a settings class, missing from the README's table: {sorted(read - documented)}"
    )
    stale = {name for name in documented - read if not name.startswith(NOT_SETTINGS)}
    assert not stale, f"in the README's table, read by no settings class: {sorted(stale)}"


def test_the_table_defaults_are_the_classes_defaults():
    read = variables()
    wrong = []
    for names, cell in configuration_table():
        if all(name.startswith(NOT_SETTINGS) for name in names):
            continue
        literals = re.findall(r"`([^`]*)`", cell) if cell.startswith("`") else []
        if literals and len(literals) not in (1, len(names)):
            wrong.append(f"{', '.join(names)}: {len(literals)} defaults for {len(names)} variables")
            continue
        for i, name in enumerate(names):
            if name not in read:
                continue  # the test above names it
            cls = read[name]
            field = next(f for f, variable in cls.variables().items() if variable == name)
            if not literals:
                # A default in words ("unset", "system temp", "events max age + 1 day"): the
                # class has no value of its own (None or empty) and works one out, if any.
                declared = cls.model_fields[field].default
                if declared not in (None, {}, ()):
                    wrong.append(f"{name}: the table says {cell!r}, the class {declared!r}")
                continue
            literal = literals[i if len(literals) > 1 else 0]
            default = getattr(cls.load({}), field)
            documented = getattr(cls.load({name: literal}), field)
            if isinstance(documented, Path) and not documented.is_absolute() and default.is_absolute():
                documented = ROOT / documented  # a path in the checkout, as the table writes it
            if documented != default:
                wrong.append(f"{name}: the table says {literal!r}, the class {default!r}")
    assert not wrong, "README configuration table: " + "; ".join(wrong)
