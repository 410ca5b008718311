"""The model registry (Resources/Models.json) and the promise that importing the engine layer is cheap."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.models.registry import REGISTRY_PATH, getModelSpec, loadRegistry, modelNames

REPO = Path(__file__).resolve().parents[1]


def test_registry_lists_the_official_models_with_their_recipes():
    registry = loadRegistry()
    assert list(registry) == ["medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h", "custom", "growcut"]
    expected = {"medsam_vit_b": ("medsam_vit_b.pth", "vit_b", "medsam"),
                "sam_vit_b": ("sam_vit_b_01ec64.pth", "vit_b", "sam"),
                "sam_vit_l": ("sam_vit_l_0b3195.pth", "vit_l", "sam"),
                "sam_vit_h": ("sam_vit_h_4b8939.pth", "vit_h", "sam")}
    for modelId, (fileName, architecture, recipe) in expected.items():
        spec = registry[modelId]
        assert (spec.fileName, spec.architecture, spec.recipe) == (fileName, architecture, recipe)
        assert spec.isDownloadable and all(url.startswith("https://") for url in spec.urls)
        assert spec.sizeBytes > 300_000_000 and spec.licence
        assert spec.sha256 is None or len(spec.sha256) == 64
    assert registry["custom"].kind == "file" and registry["custom"].architecture is None
    growcut = registry["growcut"]
    assert growcut.recipe == "none" and not growcut.needsWeights and not growcut.isDownloadable


def test_model_spec_lookup_by_id_alias_and_case():
    assert getModelSpec("medsam").modelId == "medsam_vit_b"
    assert getModelSpec("SAM_ViT_H").fileName == "sam_vit_h_4b8939.pth"
    with pytest.raises(InputError, match=r"Unknown model 'sam2'.*medsam_vit_b, medsam, sam_vit_b"):
        getModelSpec("sam2")
    assert "growcut" in modelNames()


def test_malformed_registry_files_are_reported(tmp_path):
    entry = json.loads(REGISTRY_PATH.read_text())["models"][0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": [dict(entry, recipe="unknown", sha256="abc")]}))
    with pytest.raises(InputError, match=r"bad entry 'medsam_vit_b'.*recipe.*sha256"):
        loadRegistry(bad)
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"models": [entry, entry]}))
    with pytest.raises(InputError, match="twice"):
        loadRegistry(twice)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="cannot be read"):
        loadRegistry(broken)
    with pytest.raises(InputError, match="missing"):
        loadRegistry(tmp_path / "absent.json")


def test_engine_layer_imports_without_torch():
    code = ("import sys; import MedSAMSlicerLib.models.registry, MedSAMSlicerLib.models.enginefactory, MedSAMSlicerLib.engines.samengine, "
            "MedSAMSlicerLib.engines.checkpoints, MedSAMSlicerLib.models.download, MedSAMSlicerLib.engines.devices, "
            "MedSAMSlicerLib.engines.tinymodel; "
            "heavy = [m for m in ('torch', 'segment_anything', 'slicer', 'qt') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO / "MedSAMSlicer", check=True)
