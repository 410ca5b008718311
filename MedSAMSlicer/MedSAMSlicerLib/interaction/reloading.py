"""Reload MedSAMSlicerLib in place, each module after the ones it imports (the module's Reload button). No Qt.

Slicer's Reload (ScriptedLoadableModuleWidget.onReload ->
slicer.util.reloadScriptedModule, Slicer 5.10) re-runs only MedSAMSlicer.py;
the library it imports stays as first loaded, so edits to it would be ignored
until Slicer restarts. Reloading every loaded library module after the modules
it imports (core first: imports point down the layers, never in a circle,
Testing/test_layers.py) lets ``from ..core.errors import X`` pick up the new X.
"""

import ast
import importlib
import sys
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = "MedSAMSlicerLib"


def _importedLibraryModules(module) -> Set[str]:
    """Names of the loaded MedSAMSlicerLib modules that ``module``'s source imports."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return set()
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    package = module.__name__ if path.endswith("__init__.py") else module.__name__.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from .pkg import module`
            found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in sys.modules and (name == PACKAGE or name.startswith(PACKAGE + "."))}


def reloadOrder() -> List[str]:
    """The loaded MedSAMSlicerLib modules, each after every library module it imports."""
    names = sorted(name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + "."))
    imports: Dict[str, Set[str]] = {name: _importedLibraryModules(sys.modules[name]) - {name} for name in names}
    order, done = [], set()

    def visit(name, path=()):
        if name in done or name in path:
            return
        for dependency in sorted(imports.get(name, ())):
            visit(dependency, path + (name,))
        done.add(name)
        order.append(name)

    for name in names:
        visit(name)
    return order


def reloadLibrary() -> List[str]:
    """importlib.reload every loaded MedSAMSlicerLib module in reloadOrder(); returns the names reloaded."""
    order = reloadOrder()
    for name in order:
        importlib.reload(sys.modules[name])
    return order
