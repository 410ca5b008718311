"""The library's layers (DESIGN.md "Layout"): imports point down the list of layers and never form a circle.

Reads every module of MedSAMSlicerLib with ast (nothing is imported), resolves each import of our own
(absolute or relative, at module level or inside a function) to the module it names, and checks it
against the layer order.
"""

import ast
from pathlib import Path

LIB_DIR = Path(__file__).resolve().parents[1] / "MedSAMSlicer" / "MedSAMSlicerLib"
LAYERS = ["core", "engines", "models", "embeddings", "imaging", "mrml", "workflow", "interaction", "cli"]


def moduleName(path: Path) -> str:
    parts = list(path.relative_to(LIB_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def allModules() -> dict:
    return {moduleName(path): path for path in sorted(LIB_DIR.rglob("*.py"))}


def importedModules(name: str, path: Path, known: dict) -> set:
    """Every MedSAMSlicerLib module that `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` names a module; `from mod import name` names mod.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found.update(t for t in targets if t.split(".")[0] == "MedSAMSlicerLib" and t in known)
    found.discard(name)
    return found


def layerOf(name: str) -> int:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def test_every_module_sits_in_a_layer():
    loose = [name for name in allModules() if layerOf(name) < 0 and name != "MedSAMSlicerLib"]
    assert not loose, f"modules outside the layer packages {LAYERS}: {loose}"


def test_imports_point_down_the_layers():
    known = allModules()
    upward = []
    for name, path in known.items():
        for target in importedModules(name, path, known):
            if layerOf(target) > layerOf(name):
                upward.append(f"{name} imports {target} ({LAYERS[layerOf(target)]} is above {LAYERS[layerOf(name)]})")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_circle():
    known = allModules()
    graph = {name: importedModules(name, path, known) for name, path in known.items()}
    state, stack, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The checks above would catch an upward or circular import written either way."""
    known = allModules()
    name = "MedSAMSlicerLib.core.errors"
    fake = tmp_path / "errors.py"
    fake.write_text("def f():\n    from ..workflow.logic import MedSAMLogic\nfrom . import progress\n")
    found = importedModules(name, fake, known)
    assert found == {"MedSAMSlicerLib.workflow.logic", "MedSAMSlicerLib.core.progress"}
