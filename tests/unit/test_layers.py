"""The layering holds: imports point down (pyproject.toml's contract, run by
`make lint`), and nothing dodges it with an import inside a function."""

import ast
from pathlib import Path

from tests.helpers import PROJECT_DIR

PACKAGES = ("picloud", "triggers", "outbox", "deadletters")

# The documented exceptions (docs/architecture.md): AppConfig.ready registers
# hooks once apps are loaded, and two imports of optional, heavy code that
# only runs without DATABASE_URL.
ALLOWED = {
    ("picloud/settings.py", "_database"),
    ("picloud/db/embedded.py", "_pgserver"),
}


def function_level_imports():
    for package in PACKAGES:
        for path in sorted((PROJECT_DIR / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            relative = str(path.relative_to(PROJECT_DIR))
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                if node.name == "ready" and path.name == "apps.py":
                    continue
                if (relative, node.name) in ALLOWED:
                    continue
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        yield f"{relative}:{inner.lineno} in {node.name}()"


def test_no_import_inside_a_function_outside_the_documented_exceptions():
    found = list(function_level_imports())
    assert found == [], "imports inside functions hide cycles; import at the top:\n" + "\n".join(
        found
    )


def test_the_layer_contract_is_configured_and_run_by_make_lint():
    pyproject = (PROJECT_DIR / "pyproject.toml").read_text()
    assert "[[tool.importlinter.contracts]]" in pyproject
    assert "lint-imports" in (PROJECT_DIR / "Makefile").read_text()
    assert Path(PROJECT_DIR / "docs" / "architecture.md").exists()
