"""The README's two commands work on a clean machine: every package the library imports is installed by the
extra the demo uses, and CI runs the demo exactly as the README gives it, in its own environment, before the tests.

The demo's environment (`scripts/demo.sh`) has the project's dependencies and the [headless] extra only; a
package that only the [test] extra brings (pytest) must never be needed by the library. The import scan is
static (ast), so it also covers imports inside functions that the suite might not reach.
"""

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB_DIR = REPO / "MedSAMSlicer" / "MedSAMSlicerLib"

#: Top-level import name -> the distribution that provides it.
DISTRIBUTIONS = {
    "numpy": "numpy", "SimpleITK": "SimpleITK", "scipy": "scipy", "torch": "torch", "torchvision": "torchvision",
    "segment_anything": "segment-anything", "slicer": "slicer-core", "vtk": "slicer-core", "PIL": "Pillow",
}
#: Imported only inside the Slicer application or only when present (guarded by ImportError), never needed headless.
OPTIONAL = {
    "PyTorchUtils": "the Slicer PyTorch extension's helper, used only inside Slicer",
    "sam2": "SAM 2 engines, installed on first use of a SAM 2 model",
    "qt": "Slicer application only", "ctk": "Slicer application only",
    "triton": "torch's compiler when installed with it; headless views load it before Mesa's libLLVM (guarded by find_spec)",
}


def thirdPartyImports():
    """{top-level module name: [files importing it]} for every non-stdlib, non-relative import in the library."""
    found = {}
    for path in sorted(LIB_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "MedSAMSlicerLib" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(path.relative_to(REPO).as_posix())
    return found


def requirementNames(specifiers):
    """Distribution names of requirement strings ("scipy>=1.9" -> "scipy"), lower case."""
    return {re.split(r"[<>=!~\[; ]", spec, 1)[0].strip().lower() for spec in specifiers}


def test_every_library_import_is_installed_by_the_demo_environment():
    tomllib = pytest.importorskip("tomllib")
    if not hasattr(sys, "stdlib_module_names"):
        pytest.skip("needs Python 3.10+ to tell standard-library modules apart")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    demoEnvironment = requirementNames(project["dependencies"]) | requirementNames(
        project["optional-dependencies"]["headless"])
    problems = []
    for module, files in sorted(thirdPartyImports().items()):
        if module in OPTIONAL:
            continue
        distribution = DISTRIBUTIONS.get(module)
        if distribution is None:
            problems.append(f"{module} (imported by {files[0]}) is not known to this test: add it to DISTRIBUTIONS "
                            "and to pyproject's dependencies, or to OPTIONAL if it is guarded")
        elif distribution.lower() not in demoEnvironment:
            problems.append(f"{module} (imported by {files[0]}) comes from {distribution}, which neither the "
                            "dependencies nor the [headless] extra install: `bash scripts/demo.sh` would fail")
    assert not problems, "\n".join(problems)


def readmeCommands():
    """The README's indented shell commands under 'Two commands', in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


def ciCommands():
    """The command lines .ci/run executes (comments, `set` and `cd` left out), in order."""
    lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines
            if line.strip() and not line.startswith(("#", "set ", "cd ")) and not line.startswith("#!")]


def test_ci_runs_the_readme_demo_before_the_tests_exactly_as_written():
    readme = readmeCommands()
    assert readme == ["bash scripts/demo.sh", "bash scripts/test.sh"], readme
    assert ciCommands() == readme  # the demo first, in the .venv it creates itself, then the suite


def test_demo_script_installs_only_the_headless_extra():
    script = (REPO / "scripts" / "demo.sh").read_text(encoding="utf-8")
    installs = re.findall(r"pip install[^\n]*", script)
    assert any('-e ".[headless]"' in line for line in installs), installs
    assert not any("[test]" in line or "pytest" in line for line in installs), installs
