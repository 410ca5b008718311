"""Check and install the Python packages the SAM engines need inside Slicer.

The weight-free engine needs nothing beyond Slicer itself; MedSAM and SAM need
torch, torchvision and segment-anything; SAM 2.1 and MedSAM2 also sam2 (installed
without its CUDA extension, see PIP_OPTIONS) and its small dependencies. Inside the Slicer application torch
comes from the PyTorch extension (PyTorchUtils picks the build that matches
the GPU driver); everything else is listed in Resources/requirements.txt and
installed with slicer.util.pip_install.

No dialogs here: the caller passes a ``confirm(text) -> bool`` callback (the
widget shows one question; a script can pass ``lambda text: True``).

Order matters, and everything is checked before anything is installed:
torch goes first, through PyTorchUtils, so that pip never pulls a CPU-only
torch from PyPI as a dependency of something else. A failure raises
DependencyError saying what is and is not installed and what to do.
"""

import importlib
import importlib.util
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..core.errors import DependencyError

TORCH_MODULES = ("torch", "torchvision")
"""Import names that the PyTorch extension installs (never pip-installed by us)."""

IMPORT_NAMES = {"segment-anything": "segment_anything", "pillow": "PIL", "scikit-image": "skimage", "hydra-core": "hydra"}
"""Distribution names whose import name is not the distribution name with '-' -> '_'."""

FORBIDDEN_REQUIREMENTS = ("slicer-core", "torch", "torchvision")
"""Never pip-installed inside Slicer: Slicer has its own `slicer`; torch comes from PyTorchUtils."""

PIP_OPTIONS = {"sam2": (("--no-deps", "--no-build-isolation"), {"SAM2_BUILD_CUDA": "0"})}
"""Distributions pip installs on their own, with these arguments and environment variables: sam2 is a
source package whose setup.py compiles a CUDA extension unless SAM2_BUILD_CUDA=0 and whose build
environment would download a second torch; --no-deps keeps the PyTorch extension's torch (sam2's other
run-time dependencies are listed in requirements.txt)."""

ConfirmCallback = Callable[[str], bool]


def requirementsPath() -> Path:
    """Path of MedSAMSlicer/Resources/requirements.txt (next to the installed module)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "requirements.txt"


def readRequirements(path: Optional[Path] = None) -> List[str]:
    """Requirement specifiers of a requirements file, without comments and blank lines.

    Raises DependencyError if the file lists a package that must never be
    pip-installed inside Slicer (slicer-core, torch, torchvision).
    """
    path = Path(path) if path is not None else requirementsPath()
    specs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            specs.append(spec)
    for spec in specs:
        if distributionName(spec) in FORBIDDEN_REQUIREMENTS:
            raise DependencyError(
                f"{path} lists '{spec}', which must not be installed with pip inside Slicer "
                "(torch comes from the PyTorch extension, `slicer` from Slicer itself). Remove that line."
            )
    return specs


def distributionName(spec: str) -> str:
    """Normalised distribution name of a requirement specifier: 'Segment_Anything>=1.0' -> 'segment-anything'."""
    name = re.split(r"[\s<>=!~;\[@]", spec.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def importName(spec: str) -> str:
    """The module name to import for a requirement specifier ('segment-anything' -> 'segment_anything')."""
    dist = distributionName(spec)
    return IMPORT_NAMES.get(dist, dist.replace("-", "_"))


def isImportable(moduleName: str) -> bool:
    """True if ``moduleName`` can be imported; finds it without importing it (cheap, even for torch)."""
    try:
        return importlib.util.find_spec(moduleName) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class DependencyStatus:
    """What is missing: torch modules (from PyTorchUtils) and requirement specifiers (from pip)."""

    missingTorch: List[str] = field(default_factory=list)
    missingRequirements: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing."""
        return not self.missingTorch and not self.missingRequirements

    def describe(self) -> str:
        """One paragraph for the confirmation question: what will be installed, and how."""
        parts = []
        if self.missingTorch:
            parts.append(f"{', '.join(self.missingTorch)} (through the PyTorch extension, a download of 1-3 GB)")
        if self.missingRequirements:
            parts.append(f"{', '.join(self.missingRequirements)} (with pip)")
        if not parts:
            return "All Python packages MedSAM and SAM need are installed."
        return (
            "MedSAM and SAM need Python packages that are not installed yet: "
            + "; ".join(parts)
            + ". This can take several minutes and needs a network connection. Install now?"
        )


def checkDependencies(
    requirements: Optional[Sequence[str]] = None, importable: Callable[[str], bool] = isImportable
) -> DependencyStatus:
    """Find which packages the SAM engines need are missing, importing none of them.

    requirements: specifiers to check (default: Resources/requirements.txt).
    importable: ``moduleName -> bool`` (injected by tests).
    """
    specs = list(requirements) if requirements is not None else readRequirements()
    return DependencyStatus(
        missingTorch=[name for name in TORCH_MODULES if not importable(name)],
        missingRequirements=[spec for spec in specs if not importable(importName(spec))],
    )


def pyTorchUtilsInstaller() -> Optional[Callable[[], None]]:
    """A callable installing torch and torchvision through the PyTorch extension, or None without it."""
    try:
        import PyTorchUtils  # the PyTorch extension's scripted module, on sys.path inside Slicer
    except ImportError:
        return None

    def install() -> None:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
        if torch is None:
            raise DependencyError("The PyTorch extension did not install torch.")

    return install


def pipCommands(specs: Sequence[str]) -> List[tuple]:
    """The pip runs that install ``specs``: [(arguments, environment variables)], the plain specifiers in
    one run first, then each one with PIP_OPTIONS in its own run with its arguments and variables."""
    plain = [spec for spec in specs if distributionName(spec) not in PIP_OPTIONS]
    commands = [(plain, {})] if plain else []
    for spec in specs:
        if distributionName(spec) in PIP_OPTIONS:
            arguments, environment = PIP_OPTIONS[distributionName(spec)]
            commands.append(([*arguments, spec], dict(environment)))
    return commands


def slicerPipInstaller() -> Optional[Callable[[Sequence[str]], None]]:
    """A callable running slicer.util.pip_install on requirement specifiers, or None outside Slicer.

    slicer.util.pip_install (Slicer 5.10) runs PythonSlicer -m pip in this process's environment
    (launchConsoleProcess with useStartupEnvironment=False passes env=None), so the variables of
    pipCommands are set in os.environ for the duration of their run.
    """
    try:
        import slicer.util

        pipInstall = slicer.util.pip_install
    except (ImportError, AttributeError):
        return None

    def install(specs: Sequence[str]) -> None:
        for arguments, environment in pipCommands(specs):
            with _environment(environment):
                pipInstall(list(arguments))

    return install


@contextmanager
def _environment(variables: dict):
    """Set environment variables for the enclosed block; restore the previous values after."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ensureDependencies(
    confirm: ConfirmCallback,
    requirements: Optional[Sequence[str]] = None,
    torchInstaller: Optional[Callable[[], None]] = None,
    pipInstaller: Optional[Callable[[Sequence[str]], None]] = None,
    importable: Callable[[str], bool] = isImportable,
    progress: Optional[Callable[[float, str], None]] = None,
) -> DependencyStatus:
    """Make torch, torchvision and the requirements importable, asking ``confirm`` once first.

    Returns the (empty) DependencyStatus when everything is importable; asks
    nothing when nothing is missing. Every check (what is missing, whether an
    installer is available) happens before ``confirm`` is called, and nothing is
    installed when ``confirm`` returns False.

    torchInstaller / pipInstaller default to PyTorchUtils and slicer.util.pip_install.
    progress(fraction, text) is told which step runs (the module runs this in a
    worker thread, so the window stays usable during the download).
    Raises DependencyError: declined, no installer available (the PyTorch
    extension is missing, or this is not Slicer), an installer failed, or a
    package is still not importable afterwards.
    """
    status = checkDependencies(requirements, importable)
    if status.ok:
        return status
    if status.missingTorch:
        torchInstaller = torchInstaller or pyTorchUtilsInstaller()
        if torchInstaller is None:
            raise DependencyError(
                f"{', '.join(status.missingTorch)} is not installed and the PyTorch extension is missing. "
                "Install 'PyTorch' from the Extensions Manager, restart Slicer and try again "
                "(outside Slicer: pip install torch torchvision). The GrowCut model works without it."
            )
    if status.missingRequirements:
        pipInstaller = pipInstaller or slicerPipInstaller()
        if pipInstaller is None:
            raise DependencyError(
                f"{', '.join(status.missingRequirements)} is not installed and this is not Slicer, so it "
                f"cannot be installed here: run pip install {' '.join(status.missingRequirements)}."
            )
    if not confirm(status.describe()):
        raise DependencyError(
            "Installation declined; nothing was installed. MedSAM and SAM need "
            f"{', '.join(status.missingTorch + status.missingRequirements)}; choose the GrowCut model, "
            "or select MedSAM/SAM again to be asked again."
        )
    _runInstallers(status, torchInstaller, pipInstaller, progress or (lambda fraction, text: None))
    importlib.invalidate_caches()
    after = checkDependencies(requirements, importable)
    if not after.ok:
        raise DependencyError(
            f"Installation finished but {', '.join(after.missingTorch + after.missingRequirements)} still "
            "cannot be imported. Restart Slicer and try again; if it persists, open the PyTorch Utils "
            "module, uninstall PyTorch, restart and install again."
        )
    return after


def _runInstallers(status: DependencyStatus, torchInstaller, pipInstaller, progress) -> None:
    """Install torch first, then the pip requirements; wrap failures in DependencyError saying what is done."""
    if status.missingTorch:
        progress(0.0, f"Installing {', '.join(status.missingTorch)} through the PyTorch extension (1-3 GB)...")
        try:
            torchInstaller()
        except Exception as error:
            raise DependencyError(
                f"Installing {', '.join(status.missingTorch)} through the PyTorch extension failed ({error}). "
                "Nothing else was installed. Check the network connection, restart Slicer and try again, "
                "or install torch from the PyTorch Utils module."
            ) from error
    if status.missingRequirements:
        progress(0.5 if status.missingTorch else 0.0, f"Installing {', '.join(status.missingRequirements)} with pip...")
        try:
            pipInstaller(status.missingRequirements)
        except Exception as error:
            done = f"{', '.join(status.missingTorch)} was installed; " if status.missingTorch else ""
            raise DependencyError(
                f"Installing {', '.join(status.missingRequirements)} with pip failed ({error}). {done}"
                "Check the network connection and try again, or run in Slicer's Python console: "
                f"slicer.util.pip_install('{' '.join(status.missingRequirements)}')."
            ) from error
