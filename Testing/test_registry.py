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
    assert list(registry) == ["medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam2", "sam2.1_hiera_t",
                              "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l", "custom", "growcut"]
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
    sam2 = {"medsam2": ("MedSAM2_latest.pt", "hiera_t", "medsam2", "huggingface.co/wanglab/MedSAM2/"),
            "sam2.1_hiera_t": ("sam2.1_hiera_tiny.pt", "hiera_t", "sam2", "segment_anything_2/092824/"),
            "sam2.1_hiera_s": ("sam2.1_hiera_small.pt", "hiera_s", "sam2", "segment_anything_2/092824/"),
            "sam2.1_hiera_b+": ("sam2.1_hiera_base_plus.pt", "hiera_b+", "sam2", "segment_anything_2/092824/"),
            "sam2.1_hiera_l": ("sam2.1_hiera_large.pt", "hiera_l", "sam2", "segment_anything_2/092824/")}
    for modelId, (fileName, architecture, recipe, where) in sam2.items():
        spec = registry[modelId]
        assert (spec.fileName, spec.architecture, spec.recipe) == (fileName, architecture, recipe) and spec.isSam2
        assert spec.isDownloadable and spec.urls[0].startswith("https://") and where in spec.urls[0]
        assert spec.licence == "Apache-2.0" and spec.homepage
        # no published size or SHA-256 was found for these files: null, so the download is not checked by them
        assert spec.sizeBytes is None and spec.sha256 is None
    assert not registry["medsam_vit_b"].isSam2
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
            "MedSAMSlicerLib.engines.tinymodel, MedSAMSlicerLib.engines.sam2engine, MedSAMSlicerLib.engines.sam2memory, "
            "MedSAMSlicerLib.engines.sam2checkpoints, MedSAMSlicerLib.engines.tinysam2, "
            "MedSAMSlicerLib.workflow.memorypropagation; "
            "heavy = [m for m in ('torch', 'segment_anything', 'sam2', 'hydra', 'slicer', 'qt') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO / "MedSAMSlicer", check=True)
