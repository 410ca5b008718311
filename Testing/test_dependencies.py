"""dependencies.py: what is missing, asking once, installing torch before pip, clear failures."""

import pytest

from MedSAMSlicerLib.models import dependencies
from MedSAMSlicerLib.core.errors import DependencyError


class FakeEnvironment:
    """Importable modules as a set; installers that record calls and make modules importable."""

    def __init__(self, present):
        self.present = set(present)
        self.calls = []

    def importable(self, name):
        return name in self.present

    def installTorch(self):
        self.calls.append("torch")
        self.present.update({"torch", "torchvision"})

    def pipInstall(self, specs):
        self.calls.append(("pip", list(specs)))
        self.present.update(dependencies.importName(spec) for spec in specs)


def test_requirements_file_lists_segment_anything_and_never_torch_or_slicer_core():
    specs = dependencies.readRequirements()
    names = {dependencies.distributionName(spec) for spec in specs}
    assert "segment-anything" in names
    assert not names & {"torch", "torchvision", "slicer-core"}


def test_forbidden_requirement_is_rejected(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nsegment-anything\nslicer_core>=5\n")
    with pytest.raises(DependencyError, match="slicer_core"):
        dependencies.readRequirements(path)


def test_import_names_follow_distribution_names():
    assert dependencies.importName("segment-anything>=1.0") == "segment_anything"
    assert dependencies.importName("Pillow") == "PIL"
    assert dependencies.importName("some.package[extra]==2") == "some_package"


def test_check_reports_each_missing_package():
    env = FakeEnvironment({"torch"})
    status = dependencies.checkDependencies(["segment-anything>=1.0"], env.importable)
    assert status.missingTorch == ["torchvision"]
    assert status.missingRequirements == ["segment-anything>=1.0"]
    assert not status.ok
    assert "segment-anything" in status.describe() and "torchvision" in status.describe()


def test_nothing_missing_asks_nothing():
    env = FakeEnvironment({"torch", "torchvision", "segment_anything"})
    asked = []
    status = dependencies.ensureDependencies(asked.append, ["segment-anything"], env.installTorch, env.pipInstall, env.importable)
    assert status.ok and asked == [] and env.calls == []


def test_declined_confirmation_installs_nothing():
    env = FakeEnvironment(set())
    questions = []

    def decline(text):
        questions.append(text)
        return False

    with pytest.raises(DependencyError, match="nothing was installed"):
        dependencies.ensureDependencies(decline, ["segment-anything"], env.installTorch, env.pipInstall, env.importable)
    assert len(questions) == 1 and env.calls == []


def test_confirmed_install_puts_torch_before_pip():
    env = FakeEnvironment(set())
    status = dependencies.ensureDependencies(lambda text: True, ["segment-anything"], env.installTorch, env.pipInstall, env.importable)
    assert status.ok
    assert env.calls == ["torch", ("pip", ["segment-anything"])]


def test_missing_pytorch_extension_fails_before_asking(monkeypatch):
    env = FakeEnvironment({"segment_anything"})
    monkeypatch.setattr(dependencies, "pyTorchUtilsInstaller", lambda: None)
    asked = []
    with pytest.raises(DependencyError, match="PyTorch extension is missing"):
        dependencies.ensureDependencies(asked.append, ["segment-anything"], None, env.pipInstall, env.importable)
    assert asked == [] and env.calls == []


def test_failed_torch_install_stops_before_pip():
    env = FakeEnvironment(set())

    def brokenTorch():
        env.calls.append("torch")
        raise OSError("no network")

    with pytest.raises(DependencyError, match="no network.*Nothing else was installed"):
        dependencies.ensureDependencies(lambda text: True, ["segment-anything"], brokenTorch, env.pipInstall, env.importable)
    assert env.calls == ["torch"]


def test_failed_pip_install_says_torch_is_installed():
    env = FakeEnvironment(set())

    def brokenPip(specs):
        raise RuntimeError("pip exited with 1")

    with pytest.raises(DependencyError, match="torch, torchvision was installed"):
        dependencies.ensureDependencies(lambda text: True, ["segment-anything"], env.installTorch, brokenPip, env.importable)


def test_package_still_missing_after_install_is_reported():
    env = FakeEnvironment({"torch", "torchvision"})
    with pytest.raises(DependencyError, match="still cannot be imported"):
        dependencies.ensureDependencies(lambda text: True, ["segment-anything"], None, lambda specs: None, env.importable)


def test_real_check_in_this_environment_finds_torch():
    # The test venv has torch and segment-anything: the real finder must see them without importing.
    assert dependencies.checkDependencies().ok


def test_sam2_is_installed_on_its_own_without_cuda_build_isolation_or_dependencies(monkeypatch):
    import os
    import sys
    import types

    specs = dependencies.readRequirements()
    assert "sam2==1.1.0" in specs and dependencies.importName("hydra-core>=1.3.2") == "hydra"
    commands = dependencies.pipCommands(["segment-anything>=1.0", "sam2==1.1.0", "hydra-core>=1.3.2"])
    assert commands == [(["segment-anything>=1.0", "hydra-core>=1.3.2"], {}),
                        (["--no-deps", "--no-build-isolation", "sam2==1.1.0"], {"SAM2_BUILD_CUDA": "0"})]
    # Inside Slicer: slicer.util.pip_install runs pip in this process's environment (Slicer 5.10 util.py).
    calls = []
    fakeUtil = types.SimpleNamespace(pip_install=lambda args: calls.append((args, os.environ.get("SAM2_BUILD_CUDA"))))
    fakeSlicer = types.ModuleType("slicer")
    fakeSlicer.util = fakeUtil
    monkeypatch.setitem(sys.modules, "slicer", fakeSlicer)
    monkeypatch.setitem(sys.modules, "slicer.util", fakeUtil)
    monkeypatch.delenv("SAM2_BUILD_CUDA", raising=False)
    dependencies.slicerPipInstaller()(["tqdm>=4.66", "sam2==1.1.0"])
    assert calls == [(["tqdm>=4.66"], None), (["--no-deps", "--no-build-isolation", "sam2==1.1.0"], "0")]
    assert "SAM2_BUILD_CUDA" not in os.environ
