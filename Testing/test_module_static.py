"""Checks of the Slicer module that run without the Slicer application.

The module file needs Qt and the Slicer application, which CI does not have, so
it is checked as source: it parses (also as Python 3.9, so an older Slicer can
show its one line), stays thin, imports no torch and nothing of the library on
an older Slicer, every widget it uses is in the .ui, every parameter bound in
the .ui exists with a type the Slicer GUI connector can bind, its parameter
node has the fields of the controller's ModuleParameters, every Logic and
controller member it calls exists, and the CMake files package every library
file and resource and carry the Extensions Index metadata.
"""

import ast
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MedSAMSlicer"
MODULE_FILE = MODULE_DIR / "MedSAMSlicer.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSAMSlicer.ui"
LIB_DIR = MODULE_DIR / "MedSAMSlicerLib"
MODULE_LINE_BUDGET = 350  # DESIGN.md: "The module file stays under about 350 lines"

# The Slicer GUI connectors match the widget class exactly (type(widget) == ...), so a
# parameter bound to a widget must have the type that widget's connector handles.
CONNECTOR_TYPES = {
    "QCheckBox": "bool",
    "QSpinBox": "int",
    "QDoubleSpinBox": "float",
    "QComboBox": "Enum",  # QComboBoxToEnumConnector: shows each member's label()
    "QLineEdit": "str",
    "qMRMLNodeComboBox": "vtkMRML",
}


@pytest.fixture(scope="module")
def moduleTree():
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


@pytest.fixture(scope="module")
def uiWidgets():
    """{widget name: (class, {dynamic property name: value})} from the .ui file."""
    root = ET.parse(UI_FILE).getroot()
    widgets = {}
    for widget in root.iter("widget"):
        properties = {p.get("name"): "".join(p.itertext()).strip() for p in widget.findall("property")}
        widgets[widget.get("name")] = (widget.get("class"), properties)
    return widgets


def _classNode(tree, name):
    return next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == name)


def _parameterFields(tree):
    """{field name: annotation source} of the @parameterNodeWrapper class."""
    cls = _classNode(tree, "MedSAMSlicerParameterNode")
    return {node.target.id: ast.unparse(node.annotation) for node in cls.body if isinstance(node, ast.AnnAssign)}


def _selfAttributeNames(tree, owner):
    """Names X in every `self.<owner>.X` of the module file."""
    return {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        and node.value.attr == owner and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
    }


def test_module_file_parses_is_thin_and_never_imports_torch(moduleTree):
    lines = MODULE_FILE.read_text(encoding="utf-8").count("\n")
    assert lines <= MODULE_LINE_BUDGET, f"MedSAMSlicer.py has {lines} lines: move what is not Qt into MedSAMSlicerLib"
    imported = set()
    for node in ast.walk(moduleTree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    # The module must load and show its panel without torch: only the engines import it, lazily.
    assert not imported & {"torch", "torchvision", "segment_anything"}
    classes = {node.name for node in ast.walk(moduleTree) if isinstance(node, ast.ClassDef)}
    assert {"MedSAMSlicer", "MedSAMSlicerWidget", "MedSAMSlicerLogic", "MedSAMSlicerTest", "MedSAMSlicerParameterNode"} <= classes


def test_library_has_no_qt_and_what_the_module_imports_loads_without_torch(moduleTree):
    for path in sorted(LIB_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("qt", "ctk", "PythonQt", "PyQt5", "PySide2"), f"{path.name} imports {name}"
    # Every library module MedSAMSlicer.py imports must load with torch absent (the panel shows before
    # the packages are installed): import them with torch and segment_anything made unimportable.
    modules = sorted({node.module + (f".{alias.name}" if node.module == "MedSAMSlicerLib" else "")
                      for node in ast.walk(moduleTree) if isinstance(node, ast.ImportFrom)
                      and (node.module or "").startswith("MedSAMSlicerLib") for alias in node.names})
    assert "MedSAMSlicerLib.workflow.logic" in modules
    code = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'segment_anything'):\n"
        "            raise ImportError(f'{name} is blocked: the module must load without it')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = [m for m in ('qt', 'ctk', 'torch', 'segment_anything') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=MODULE_DIR, check=True, timeout=60)


def test_ui_is_well_formed_and_has_every_widget_the_module_uses(moduleTree, uiWidgets):
    used = _selfAttributeNames(moduleTree, "ui")
    # Widgets reached through getattr(self.ui, "<name>") (button tables, shortcuts) are string constants.
    widgetSuffix = re.compile(r"^[a-z]\w*(Button|ComboBox|SpinBox|CheckBox|Label|Selector|LineEdit|Bar)$")
    used |= {node.value for node in ast.walk(moduleTree) if isinstance(node, ast.Constant)
             and isinstance(node.value, str) and widgetSuffix.match(node.value)}
    missing = sorted(used - set(uiWidgets))
    assert not missing, f"MedSAMSlicer.py uses widgets the .ui does not have: {missing}"
    assert uiWidgets["MedSAMSlicer"][0] == "qMRMLWidget"
    assert uiWidgets["segmentSelector"][0] == "qMRMLSegmentSelectorWidget"


def test_every_bound_parameter_exists_with_a_type_its_widget_can_bind(moduleTree, uiWidgets):
    import enum

    from MedSAMSlicerLib.interaction import parameters

    fields = _parameterFields(moduleTree)
    bound = {props["SlicerParameterName"]: (cls, name) for name, (cls, props) in uiWidgets.items() if "SlicerParameterName" in props}
    assert {"inputVolume", "intensity", "livePreview", "applyMode", "marginMm"} <= set(bound)
    for parameter, (widgetClass, widgetName) in bound.items():
        assert parameter in fields, f"{widgetName} is bound to '{parameter}', which the parameter node lacks"
        expected = CONNECTOR_TYPES[widgetClass]
        if expected == "Enum":
            annotation = getattr(parameters, fields[parameter], None)
            assert isinstance(annotation, type) and issubclass(annotation, enum.Enum), (
                f"{widgetName} (QComboBox) needs an Enum parameter (its labels are shown), '{parameter}' is {fields[parameter]}")
        else:
            assert expected in fields[parameter], f"{widgetName} ({widgetClass}) needs a {expected} parameter, '{parameter}' is {fields[parameter]}"


def test_parameter_node_has_the_fields_and_defaults_of_the_controllers_parameters(moduleTree):
    import dataclasses

    from MedSAMSlicerLib.interaction.parameters import ModuleParameters

    fields = _parameterFields(moduleTree)
    assert set(fields) == {field.name for field in dataclasses.fields(ModuleParameters)}
    cls = _classNode(moduleTree, "MedSAMSlicerParameterNode")
    for node in cls.body:  # literal defaults must equal the controller's (others are taken from ModuleParameters)
        if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Constant):
            assert node.value.value == getattr(ModuleParameters, node.target.id), node.target.id


def test_combo_boxes_show_words_and_hold_values_the_library_accepts(moduleTree, uiWidgets):
    from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
    from MedSAMSlicerLib.interaction.parameters import ApplyMode, Intensity, Recipe
    from MedSAMSlicerLib.models import enginefactory
    from MedSAMSlicerLib.mrml.segmentwriter import MODES

    for choice in Intensity:
        if choice is not Intensity.DISPLAY:  # the viewer's window/level, read by the controller
            IntensityPolicy.parse(choice.value)
    assert {mode.value for mode in ApplyMode} == set(MODES)
    # The recipes createEngine takes for a checkpoint file of either family, and its "auto".
    fileRecipes = enginefactory.fileRecipes(sam2=False) + enginefactory.fileRecipes(sam2=True)
    assert [choice.value for choice in Recipe] == [enginefactory.AUTO_RECIPE, *fileRecipes]
    labels = [choice.label() for choice in list(Intensity) + list(ApplyMode) + list(Recipe)]
    assert "CT soft tissue" in labels and "Replace the previewed slices" in labels
    for label in labels:  # words a clinician reads, not internal values such as "ct:soft tissue" or "replaceSlices"
        properNames = re.sub(r"MedSAM|ImageNet", "", label)  # names spelt as their authors spell them
        assert ":" not in label and not re.search(r"[a-z][A-Z]", properNames), label
    # The recipe box is filled with those words and values by the widget (not bound: only some recipes fit a file).
    assert uiWidgets["recipeComboBox"][0] == "QComboBox" and "SlicerParameterName" not in uiWidgets["recipeComboBox"][1]
    assert "Automatic" in uiWidgets["recipeComboBox"][1]["toolTip"]
    source = _functionSource(moduleTree, "MedSAMSlicerWidget", "_updateButtons")
    assert "combo.addItem(choice.label(), choice.value)" in source and "self.controller.recipeChoices()" in source
    assert 'self.controller.setRecipe(self.ui.recipeComboBox.itemData(index))' in ast.unparse(moduleTree)


def test_every_logic_call_of_the_widget_exists(moduleTree, scene):
    from MedSAMSlicerLib.workflow.logic import MedSAMLogic

    logic = MedSAMLogic(scene)
    facade = _classNode(moduleTree, "MedSAMSlicerLogic")
    ownMethods = {node.name for node in facade.body if isinstance(node, ast.FunctionDef)}
    called = _selfAttributeNames(moduleTree, "logic")
    missing = sorted(name for name in called if not hasattr(logic, name) and name not in ownMethods)
    assert not missing, f"MedSAMSlicer.py calls Logic members that do not exist: {missing}"


def test_every_controller_call_and_button_of_the_widget_exists(moduleTree, uiWidgets, scene):
    from MedSAMSlicerLib.interaction.controller import BUTTON_ACTIONS, InteractionController
    from MedSAMSlicerLib.interaction.parameters import ModuleParameters
    from MedSAMSlicerLib.interaction.scheduler import ManualScheduler
    from MedSAMSlicerLib.workflow.logic import MedSAMLogic

    controller = InteractionController(MedSAMLogic(scene), ModuleParameters(), ManualScheduler())
    try:
        missing = sorted(name for name in _selfAttributeNames(moduleTree, "controller") if not hasattr(controller, name))
        shown = set(controller.buttonStates())
        controller.parameters.model = "custom"  # the preprocessing choice is shown
        shown |= set(controller.buttonStates())
    finally:
        controller.cleanup()
    assert not missing, f"MedSAMSlicer.py calls controller members that do not exist: {missing}"
    assert not shown - set(uiWidgets), "buttonStates() names widgets the .ui does not have (the widget sets each)"
    assert not set(BUTTON_ACTIONS) - set(uiWidgets), "BUTTON_ACTIONS names buttons the .ui does not have"


def test_module_loads_nothing_of_the_library_on_an_older_slicer(moduleTree):
    # Slicer 5.8 runs Python 3.9: the file must parse there to say which Slicer it needs.
    ast.parse(MODULE_FILE.read_text(encoding="utf-8"), feature_version=(3, 9))
    topLevelImports = [node for node in moduleTree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not any("MedSAMSlicerLib" in (getattr(node, "module", None) or "") for node in topLevelImports)
    guard = next(node for node in moduleTree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "SUPPORTED")
    assert any(isinstance(node, ast.ImportFrom) and node.module.startswith("MedSAMSlicerLib") for node in guard.body)
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "MINIMUM_SLICER_VERSION = (5, 10)" in source and "needs Slicer %d.%d or later" in source
    assert "slicer.app, \"majorVersion\"" in source and "slicer.app, \"minorVersion\"" in source


def test_module_cmake_packages_every_library_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "MedSAMSlicer")
    listed = set(re.findall(r"^\s+(\S+\.(?:py|ui|png|json|txt))\s*$", text, re.MULTILINE))
    library = {path.relative_to(MODULE_DIR).as_posix() for path in LIB_DIR.rglob("*.py")}
    assert not library - listed, f"not in MODULE_PYTHON_SCRIPTS, so not packaged: {sorted(library - listed)}"
    resources = {"Resources/UI/MedSAMSlicer.ui", "Resources/Icons/MedSAMSlicer.png", "Resources/Models.json",
                 "Resources/requirements.txt", "MedSAMSlicer.py", "Testing/Python/MedSAMSlicerTest.py"}
    assert resources <= listed
    absent = sorted(name for name in listed if not (MODULE_DIR / name).is_file())
    assert not absent, f"CMakeLists.txt lists files that do not exist: {absent}"
    assert "slicerMacroBuildScriptedModule" in text and "add_subdirectory(Testing)" in text
    testing = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest" in testing and "MedSAMSlicerTest.py" in testing


def test_extension_cmake_has_the_extensions_index_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({variable} "[^"]+"\)', text), f"{variable} missing or empty"
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(MedSAMSlicer)" in text
    # As Slicer 5.10's extension template (Utilities/Templates/Extensions/Default/CMakeLists.txt at v5.10.0).
    assert text.startswith("cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)")
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', text).group(1)
    assert all(re.fullmatch(r"[^(),]+ \([^()]+\)", person.strip()) for person in contributors.split(",")), contributors
    screenshot = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', text).group(1)
    path = REPO / "Resources" / screenshot.rsplit("/", 1)[1]
    header = path.read_bytes()[:24]  # committed, a PNG, view-sized and small
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and min(struct.unpack(">II", header[16:24])) >= 256
    assert path.stat().st_size < 200_000


@pytest.mark.parametrize("path", [MODULE_DIR / "Resources" / "Icons" / "MedSAMSlicer.png", REPO / "Resources" / "MedSAMSlicer.png"])
def test_icons_are_128_pixel_pngs(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (128, 128)


def _functionSource(tree, className, functionName):
    cls = _classNode(tree, className)
    return ast.unparse(next(node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == functionName))


def test_widget_keeps_one_parameter_wrapper_and_never_echoes_the_segment_selector(moduleTree):
    # Review item 6: a new wrapper per getParameterNode() call left GUI connections behind (5.8's tag bug);
    # one wrapper per MRML node, and at most one connection, disconnected before the next.
    getter = _functionSource(moduleTree, "MedSAMSlicerLogic", "getParameterNode")
    assert "self._parameterWrapper is None or self._parameterWrapper.parameterNode is not node" in getter
    assert getter.count("MedSAMSlicerParameterNode(") == 1
    setter = _functionSource(moduleTree, "MedSAMSlicerWidget", "setParameterNode")
    assert setter.index("disconnectGui") < setter.index("connectGui(self.ui)")
    # Review item 7: the selector is updated with its signals blocked, and read as a (segmentation, segment) pair.
    shown = _functionSource(moduleTree, "MedSAMSlicerWidget", "onParameterNodeModified")
    assert "blockSignals(True)" in shown and "blockSignals(wasBlocked)" in shown
    read = _functionSource(moduleTree, "MedSAMSlicerWidget", "_onSegmentSelectorChanged")
    assert "setSegmentSelection(self.ui.segmentSelector.currentNode(), self.ui.segmentSelector.currentSegmentID())" in read


def test_widget_reload_reloads_the_library_first_and_cleanup_stops_everything(moduleTree):
    reload = _functionSource(moduleTree, "MedSAMSlicerWidget", "onReload")
    assert reload.index("reloadLibrary()") < reload.index("ScriptedLoadableModuleWidget.onReload(self)")
    cleanup = _functionSource(moduleTree, "MedSAMSlicerWidget", "cleanup")
    for call in ("self._scheduler.stop()", "self.controller.cleanup()", "self.removeObservers()", "self._removeShortcuts()"):
        assert call in cleanup, call


def test_panel_and_guide_say_what_really_happens(uiWidgets):
    from MedSAMSlicerLib.interaction.parameters import ApplyMode

    tooltip = uiWidgets["applyModeComboBox"][1]["toolTip"]
    assert all(mode.label() in tooltip for mode in ApplyMode) and "default" in tooltip
    assert "click the opposite corner" in uiWidgets["boxButton"][1]["toolTip"]
    accept, fill = uiWidgets["acceptSliceButton"][1]["toolTip"], uiWidgets["fillButton"][1]["toolTip"]
    assert "never overwrite" in accept and "key for Fill" in accept
    assert "between the accepted ones" in fill and "nothing is written until Apply" in fill
    guide = (REPO / "docs" / "user-guide.md").read_text(encoding="utf-8")
    assert "**click** one corner" in guide and "**move**" in guide and "5.10 or later" in guide
    assert "drag a box" not in guide and "*Add segment* in the selector" not in guide
    assert "**Accept slice**" in guide and "**Fill between accepted slices**" in guide and "no button for it" not in guide
