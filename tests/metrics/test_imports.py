"""``lightning_gensens.functional`` and ``lightning_gensens.metrics`` load without Lightning, W&B, matplotlib or
scikit-learn: none is imported at module level by their files, nor pulled in when importing them. The package's
top level imports none of them, nor torch, until a name is used."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_gensens

HEAVY = {"lightning", "pytorch_lightning", "wandb", "matplotlib", "sklearn"}
PACKAGE = Path(lightning_gensens.__file__).parent
FILES = sorted(p for sub in ("functional", "metrics") for p in (PACKAGE / sub).glob("*.py"))


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level packages imported outside functions, classes and ``if TYPE_CHECKING:`` blocks."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            pending.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_heavy_import_at_module_level(path):
    assert not _module_level_imports(ast.parse(path.read_text())) & HEAVY


def test_importing_them_pulls_in_nothing_heavy_beyond_torchmetrics():
    # the package __init__ is bypassed (an empty package object), so only these two subpackages are judged;
    # torchmetrics itself imports matplotlib when it is installed, which is not ours to judge
    code = f"""
import sys, types
import torch, torchmetrics
before = set(sys.modules)
package = types.ModuleType("lightning_gensens")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["lightning_gensens"] = package
import lightning_gensens.functional, lightning_gensens.metrics
print(sorted({{m.split(".")[0] for m in set(sys.modules) - before}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not set(ast.literal_eval(out)) & HEAVY, out


def test_the_top_level_lists_its_exports_without_importing_torch():
    """The measure callbacks' names come from ``lightning_gensens.registry``, which imports nothing."""
    code = """
import sys
import lightning_gensens
names = sorted(lightning_gensens.__all__), sorted(dir(lightning_gensens))
print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "lightning", "torchmetrics"}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert ast.literal_eval(out) == [], out
