"""The package's shape: layers without upward imports, no cycles, imports at the top of modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "distgan"


def test_import_contracts_are_kept():
    """`lint-imports` with the contracts of pyproject.toml: the layers, and no cycles between siblings."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout, out.stdout[-2000:]


def _function_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.col_offset > 0 and (node.module or "").startswith("distgan"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} from {node.module}")
        if isinstance(node, ast.Import) and node.col_offset > 0:
            found += [f"{path.relative_to(REPO)}:{node.lineno} import {a.name}" for a in node.names
                      if a.name.startswith("distgan")]
    return found


def test_distgan_imports_sit_at_the_top_of_library_modules():
    """A function-level import hides a dependency from the contracts; only `cli/` (a command imports the library
    when it runs, so `distgan COMMAND --help` stays fast) and the package's lazy public names may use one."""
    allowed = {PACKAGE / "__init__.py"}
    hidden = [hit for path in sorted(PACKAGE.rglob("*.py")) if path not in allowed and "cli" not in path.parts
              for hit in _function_level_imports(path)]
    assert not hidden, hidden
