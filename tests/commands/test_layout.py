"""Only ``zoo/cli.py`` imports a command module (``zoo/commands/<subcommand>.py``): the library never parses a
command line, and the helpers the commands share (run configs, checkpoint loading) live outside ``commands/``."""

import ast
from pathlib import Path

import zoo
from zoo.cli import COMMANDS, LIGHTNING_COMMANDS

ZOO = Path(zoo.__file__).parent
# the subcommands' modules: zoo's own (from the table in cli.py) and zoo fit's LightningCLI
COMMAND_MODULES = {spec.partition(":")[0] for _, spec in COMMANDS.values()} | {"zoo.commands.fit"}


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module ``path`` imports (``import a.b``, ``from a.b import c`` as ``a.b`` and ``a.b.c``, relative
    imports resolved against ``package``, by default the file's own), at any depth of the file (function-level
    imports included)."""
    package = package or ".".join(path.relative_to(ZOO.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_the_command_table_names_every_command_module():
    assert LIGHTNING_COMMANDS and {p.stem for p in (ZOO / "commands").glob("*.py")} >= {
        m.rpartition(".")[2] for m in COMMAND_MODULES
    }


def test_only_cli_imports_a_command_module():
    offenders = {}
    for path in sorted(ZOO.rglob("*.py")):
        if path == ZOO / "cli.py":
            continue
        hits = sorted(imported_modules(path) & COMMAND_MODULES)
        if hits:
            offenders[str(path.relative_to(ZOO.parent))] = hits
    assert offenders == {}, f"import a command module (only zoo/cli.py may): {offenders}"


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    """The check itself: an import inside a function and a relative one are both found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..commands import info\n    import zoo.commands.fit\n")
    assert {"zoo.commands.info", "zoo.commands.fit"} <= imported_modules(probe, package="zoo.training")
