"""The README's Quickstart is the contract: its two commands set up, train and test on a fresh machine, and CI
(.ci/run) runs them exactly as written before anything else, then every group of tests they skip."""

import ast
import re
import shlex
from pathlib import Path

from tests.helpers import GROUPS

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    """The commands of the README's Quickstart code block (its first ```bash block)."""
    section = (ROOT / "README.md").read_text().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, "the README's Quickstart has no ```bash block"
    return [line.strip() for line in block[1].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def ci_commands() -> list[str]:
    """.ci/run's command lines, without comments, blank lines, `set -euo pipefail` and `cd`."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    skipped = ("#", "set -euo pipefail", "cd ")
    return [line for line in lines if line and not line.startswith(skipped)]


def test_the_quickstart_is_two_commands_setup_and_tests():
    first, second = quickstart_commands()
    assert first.startswith("python3 -m venv .venv && ") and "-e \".[test]\"" in first and " zoo fit " in first
    assert second == ".venv/bin/python -m pytest -q"


def test_ci_starts_with_the_readme_commands_exactly():
    readme = quickstart_commands()
    assert ci_commands()[: len(readme)] == readme, (
        ".ci/run must begin with the README's Quickstart commands, copied verbatim:\n" + "\n".join(readme)
    )


def test_ci_then_runs_every_skipped_group_with_its_requirement_enforced():
    """The next pytest call selects every group the README's command may skip (tests/conftest.py GROUPS) and sets
    each group's variable, so a missing requirement fails instead of skipping."""
    later = "\n".join(ci_commands()[len(quickstart_commands()) :]).replace("\\\n", " ")
    call = next((line for line in later.splitlines() if " -m pytest " in line), None)
    assert call, ".ci/run runs no tests after the README's commands"
    words = shlex.split(call)
    options = words[words.index("pytest") + 1 :]
    assert "-m" in options, f".ci/run's second pytest call selects no marker expression: {call}"
    assert set(options[options.index("-m") + 1].split(" or ")) == set(GROUPS)
    for variable, *_ in GROUPS.values():
        assert f"{variable}=1" in words[: words.index("pytest")], f"{call} does not set {variable}=1"


def imported_test_modules(path: Path) -> list[str]:
    """The test modules (``tests.test_*``, ``tests.<package>.test_*``) and conftest files that the file at ``path``
    imports, at any depth of its code (a function's own imports count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from tests.training import test_faults` imports a module by its last name
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.ImportFrom):  # relative: `from . import test_x`, `from .test_x import y`
            names = [f".{node.module or ''}", *(f".{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if (parts[0] in ("tests", "") and any(p.startswith("test_") or p == "conftest" for p in parts[1:])):
                found.append(name)
    return found


def test_no_test_module_imports_another():
    """Shared helpers live in tests/helpers.py (functions, constants, classes runs name) and tests/conftest.py
    (fixtures): a test module imported by another runs its module-level code and registers its fixtures twice."""
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if (found := imported_test_modules(path))
    }
    assert not offenders, f"test files that import another test module or conftest (use tests/helpers.py): {offenders}"
