"""The preprocessing of a user's checkpoint file, chosen in the panel: through the interaction controller on real
MRML nodes, with tiny SAM and SAM 2.1 models saved in the real checkpoint formats (engines/tinymodel.py,
engines/tinysam2.py) and loaded by the same code that loads a user's fine-tune.
"""

import pytest

pytest.importorskip("segment_anything")

from MedSAMSlicerLib.core.errors import InputError  # noqa: E402
from MedSAMSlicerLib.engines.tinymodel import writeTinyCheckpoint  # noqa: E402
from MedSAMSlicerLib.interaction.controller import InteractionController  # noqa: E402
from MedSAMSlicerLib.interaction.parameters import Recipe  # noqa: E402
from MedSAMSlicerLib.models.enginefactory import createEngine  # noqa: E402
from MedSAMSlicerLib.workflow.logic import MedSAMLogic  # noqa: E402

from test_controller import Session  # noqa: E402


@pytest.fixture
def session(scene, oneTorchThread):
    current = Session(scene)
    yield current
    current.controller.cleanup()


def chooseFile(session, path):
    """What the panel does when the user picks the custom model and browses to ``path``."""
    session.parameters.model = "custom"
    session.parameters.checkpointPath = str(path)
    session.controller.parametersChanged()  # the module calls this on every parameter node change
    session.settle()  # the file's family is read in the background


def previewEmbedding(session):
    """The embedding the live preview encoded for the prompted slice (a cache hit: nothing is encoded again)."""
    logic = session.logic
    return logic.service.embedding(logic.source, logic.axis, session.k)


def test_a_recipe_chosen_for_a_sam_file_reloads_it_with_that_preprocessing_and_the_preview_uses_it(session, tmp_path):
    path = writeTinyCheckpoint(tmp_path / "finetune.pth", seed=2)  # the name does not say MedSAM: automatic is SAM
    controller = session.controller
    assert controller.recipeChoices() == [] and not controller.buttonStates()["recipeComboBox"].enabled  # growcut
    chooseFile(session, path)
    assert controller.recipeChoices() == [Recipe.AUTO, Recipe.MEDSAM, Recipe.SAM]  # no SAM 2 recipe for a ViT file
    assert controller.buttonStates()["recipeComboBox"].enabled
    assert any("SAM / MedSAM (ViT) checkpoint" in text for text in session.statuses)

    controller.setRecipe(Recipe.MEDSAM.value)  # what the combo box hands over: the item's value
    assert getattr(session.logic.engine, "recipe", None) is None  # the file loads in the background
    session.settle()
    engine = session.logic.engine
    assert (type(engine).__name__, engine.recipe) == ("SamEngine", "medsam"), session.statuses
    assert session.parameters.recipe is Recipe.MEDSAM
    assert session.statuses[-1] == controller.preprocessingText()
    assert "finetune.pth runs with MedSAM (" in session.statuses[-1] and "as chosen" in session.statuses[-1]
    assert "finetune.pth" in controller.modelStatusText() and "MedSAM (" in controller.modelStatusText()

    session.drawBox()
    session.settle()  # the live preview runs with the chosen recipe, without loading the file again
    assert session.logic.engine is engine and session.logic.previewMaskKji is not None, session.statuses
    # MedSAM stretches the (non-square) slice image to 1024 x 1024 ...
    assert previewEmbedding(session).extra["inputSize"] == (1024, 1024)
    height, width = previewEmbedding(session).imageSize
    assert height != width

    controller.setRecipe(Recipe.AUTO)
    session.settle()
    assert session.logic.engine.recipe == "sam" and "automatically" in session.statuses[-1]
    session.press("segmentSliceButton")
    session.settle()
    # ... SAM scales its longest side to 1024 and pads: the embedding is another one, of another input size.
    assert previewEmbedding(session).extra["inputSize"] == (round(1024 * height / width), 1024)
    assert session.errors == []


def test_a_sam2_file_offers_its_recipes_only_and_a_sam_recipe_is_refused_with_the_librarys_message(session, tmp_path):
    pytest.importorskip("sam2")
    from MedSAMSlicerLib.engines.tinysam2 import writeTinySam2Checkpoint

    path = writeTinySam2Checkpoint(tmp_path / "mine.pt", seed=1)
    controller = session.controller
    chooseFile(session, path)
    assert controller.recipeChoices() == [Recipe.AUTO, Recipe.MEDSAM2, Recipe.SAM2]

    controller.setRecipe(Recipe.SAM)  # e.g. kept from a SAM file chosen before
    session.settle()
    with pytest.raises(InputError) as refused:
        createEngine(str(path), device="cpu", recipe="sam")
    assert str(refused.value) in session.statuses and session.errors == [str(refused.value)]
    assert getattr(session.logic.engine, "recipe", None) is None  # nothing loaded: still the weight-free engine
    assert controller.preprocessingText() == ""
    assert controller.recipeChoices()[-1] is Recipe.SAM  # the stored choice stays visible with the refusal

    controller.setRecipe(Recipe.MEDSAM2)
    session.settle()
    engine = session.logic.engine
    assert (type(engine).__name__, engine.recipe, engine.imgSize) == ("Sam2Engine", "medsam2", 512)
    assert controller.recipeChoices() == [Recipe.AUTO, Recipe.MEDSAM2, Recipe.SAM2]
    controller.setRecipe(Recipe.SAM2)
    session.settle()
    assert (session.logic.engine.recipe, session.logic.engine.imgSize) == ("sam2", 1024)
    assert "mine.pt runs with SAM 2.1 (1024 x 1024" in session.statuses[-1]


def test_the_choice_stays_in_the_parameters_and_a_new_panel_loads_the_file_with_it(session, tmp_path):
    path = writeTinyCheckpoint(tmp_path / "medsam_finetune.pth", seed=4)  # automatic would be MedSAM's
    chooseFile(session, path)
    session.controller.setRecipe(Recipe.SAM)
    session.settle()
    assert session.parameters.recipe is Recipe.SAM and session.logic.engine.recipe == "sam"
    # The module is reloaded (or the scene opened again): a new controller and Logic over the same parameters.
    session.controller.cleanup()
    session.logic = MedSAMLogic(session.scene)
    session.controller = InteractionController(session.logic, session.parameters, session.scheduler)
    session.controller.status.connect(session.statuses.append)
    session.controller.parametersChanged()
    session.drawBox()
    session.settle()
    assert session.logic.engine.recipe == "sam" and session.logic.previewMaskKji is not None, session.statuses
    with pytest.raises(InputError, match="Unknown preprocessing 'vit'"):
        session.controller.setRecipe("vit")
    assert session.parameters.recipe is Recipe.SAM


def test_other_models_hide_the_choice_and_an_unreadable_file_offers_every_recipe(session, tmp_path):
    controller = session.controller
    for model in ("growcut", "medsam", "sam2.1_hiera_t"):
        session.parameters.model = model
        states = controller.buttonStates()
        assert controller.recipeChoices() == [] and not states["recipeComboBox"].enabled
        assert states["recipeComboBox"].visible is False and states["recipeLabel"].visible is False
    session.parameters.model = "custom"
    states = controller.buttonStates()  # shown, but nothing to choose for until a file is
    assert states["recipeComboBox"].visible and states["recipeLabel"].visible and not states["recipeComboBox"].enabled
    assert controller.recipeChoices() == list(Recipe)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    chooseFile(session, broken)
    assert controller.recipeChoices() == list(Recipe)  # the family is unknown: the loader says what fits
    assert any("broken.pth" in text for text in session.statuses), session.statuses
    session.settle()
    assert controller.idle  # read once, not again and again
