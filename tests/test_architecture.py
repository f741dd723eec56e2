"""The layers' import rules (docs/architecture.md), read from the source, imports inside
functions included: a rule broken anywhere fails here, not in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"

# layer: (its files, the top-level packages and txmetrics modules it must not import)
THIRD_PARTY_IO = ("psycopg", "azure", "pyarrow", "pulumi", "pulumi_azure_native", "yoyo", "requests", "urllib",
                  "socket", "subprocess")
LAYERS: dict[str, tuple[list[Path], tuple[str, ...]]] = {
    # the pure core: no I/O library, no adapter, no service, no settings (which read the environment)
    "core": (sorted((FUNCTIONS / "txmetrics" / "core").glob("*.py")),
             (*THIRD_PARTY_IO, "os", "txmetrics.adapters", "txmetrics.pipeline", "txmetrics.runtime",
              "txmetrics.settings", "txmetrics.kpi", "txmetrics.query", "txmetrics_cli", "localdev", "lifecycle",
              "infra")),
    # adapters: I/O for the core, never the command line, the local services or the deployment
    "adapters": (sorted((FUNCTIONS / "txmetrics" / "adapters").glob("*.py")),
                 ("txmetrics_cli", "localdev", "infra", "lifecycle", "txmetrics.pipeline", "txmetrics.runtime",
                  "txmetrics.kpi", "txmetrics.query", "txmetrics.replay")),
    # the function bundle (what is deployed, subpackages included): nothing from the
    # repository's other packages. schema.py is the one module that runs only on the deploying
    # machine (infra, the CLI): it imports yoyo, which the bundle does not carry, lazily.
    # report/ imports lifecycle lazily (BUNDLE_EXCEPTIONS).
    "function bundle": ([*sorted(p for p in (FUNCTIONS / "txmetrics").rglob("*.py") if p.name != "schema.py"),
                         FUNCTIONS / "function_app.py"],
                        ("txmetrics_cli", "localdev", "infra", "lifecycle", "yoyo")),
    # retention policies are data plus the code that validates and renders them
    "lifecycle": (sorted((ROOT / "lifecycle").glob("*.py")), ("txmetrics_cli", "localdev", "infra")),
}


def imported(path: Path, functions: Path = FUNCTIONS) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(functions if functions in path.parents else ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def breaks(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names for f in forbidden if n == f or n.startswith(f + "."))


# The one exception, named so that no other can creep in: the report's retention outlook
# (`txmetrics report`, `make run`) reads the stack's lifecycle policy and plan, imported inside
# the functions that need them. The report runs from the CLI only; no trigger calls it, so the
# deployed bundle never executes these imports.
BUNDLE_EXCEPTIONS = {
    "functions/txmetrics/report/__init__.py": {"lifecycle.policy", "lifecycle.policy.load_policy"},
    "functions/txmetrics/report/data.py": {"lifecycle.plan", "lifecycle.plan.make_plans"},
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    files, forbidden = LAYERS[layer]
    assert files, f"no files for layer {layer}"
    allowed = BUNDLE_EXCEPTIONS if layer == "function bundle" else {}
    wrong: dict[str, list[str]] = {}
    for p in files:
        name = str(p.relative_to(ROOT))
        if b := [n for n in breaks(imported(p), forbidden) if n not in allowed.get(name, set())]:
            wrong[name] = b
    assert not wrong, f"{layer} imports what it must not: {wrong}"


def test_the_bundle_rule_covers_its_subpackages() -> None:
    """The report (a subpackage of the bundle) is checked too: its exceptions are exactly the
    imports it has, and the modules of every subpackage are in the bundle's list."""
    files = LAYERS["function bundle"][0]
    for sub in ("core", "adapters", "report"):
        assert any(p.parent.name == sub for p in files), f"txmetrics/{sub}/ is not checked"
    for name, allowed in BUNDLE_EXCEPTIONS.items():
        assert breaks(imported(ROOT / name), LAYERS["function bundle"][1]) == sorted(allowed), name


def test_the_rule_reader_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    """The checker itself can fail: a core module importing an adapter, inside a function and
    relatively, is caught."""
    module = FUNCTIONS / "txmetrics" / "core" / "events.py"
    source = module.read_text() + "\n\ndef _late():\n    from ..adapters import postgres\n    import psycopg\n"
    fake = tmp_path / "functions" / "txmetrics" / "core" / "events.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    found = breaks(imported(fake, tmp_path / "functions"), LAYERS["core"][1])
    assert "txmetrics.adapters.postgres" in found and "psycopg" in found


# Where SQL may be written: the adapters (grouped by responsibility) and schema.py (the
# migrations runner). Everything else asks an adapter, so a table change has one home.
SQL_FREE = [*sorted(p for p in (FUNCTIONS / "txmetrics").rglob("*.py")
                    if "adapters" not in p.parts and p.name != "schema.py"),
            FUNCTIONS / "function_app.py", *sorted((ROOT / "lifecycle").glob("*.py")),
            *sorted((ROOT / "txmetrics_cli").glob("*.py"))]
SQL_CALLS = ("execute", "executemany", "copy", "cursor")


def sql_calls(path: Path, root: Path = ROOT) -> list[str]:
    """`x.execute(...)`-style calls in `path` (a database call written outside an adapter)."""
    return [f"{path.relative_to(root)}:{node.lineno} .{node.func.attr}()"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS]


def test_sql_lives_in_the_adapters() -> None:
    assert len(SQL_FREE) > 30, "the file list is wrong: too few files checked"
    found = [call for p in SQL_FREE for call in sql_calls(p)]
    assert not found, f"database calls outside functions/txmetrics/adapters/: {found}"


def test_the_sql_reader_sees_a_query(tmp_path: Path) -> None:
    """The checker itself can fail: a query written in a service module is caught."""
    fake = tmp_path / "kpi.py"
    fake.write_text((FUNCTIONS / "txmetrics" / "kpi.py").read_text()
                    + "\n\ndef _late(conn):\n    with conn.cursor() as cur:\n        cur.execute('SELECT 1')\n")
    assert [c.split(" ", 1)[1] for c in sql_calls(fake, tmp_path)] == [".cursor()", ".execute()"]
