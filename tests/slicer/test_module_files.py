"""The parts of the ASFDA module that need Slicer's Qt GUI cannot run here (slicer-core has no Qt),
so their consistency is checked from the files: the widget uses only widgets the .ui file has,
every parameter-node field is bound to a widget whose type Slicer's parameterNodeWrapper GUI
connectors accept for that field's type, the MRML widgets get the scene, the CMake lists name the
module's files, and the method names are asfda's."""
import ast
import re
import struct
import xml.etree.ElementTree as ET

from synthetic_data import ROOT

from asfda.select import METHODS as ASFDA_METHODS

MODULE = ROOT / "bindings" / "slicer" / "ASFDA"
SOURCE = (MODULE / "ASFDA.py").read_text()
TREE = ast.parse(SOURCE, filename="ASFDA.py")
UI = ET.parse(MODULE / "Resources" / "UI" / "ASFDA.ui").getroot()
WIDGETS = {w.get("name"): w.get("class") for w in UI.iter("widget")}

#: parameterNodeWrapper's GUI connectors (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py):
#: the widget classes each field type can be connected to.
CONNECTORS = {
    "int": {"QSpinBox", "QSlider", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "QComboBox"},
    "bool": {"QCheckBox", "QPushButton", "QComboBox"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox"},
    "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"},
    "vtkMRMLSegmentationNode": {"qMRMLNodeComboBox"},
}


def parameter_fields():
    """name -> (base type, has Choice) of the @parameterNodeWrapper class's annotated fields."""
    cls = next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == "ASFDAParameterNode")
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in cls.decorator_list)
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            ann = stmt.annotation
            if isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "Annotated":
                base, *extras = ann.slice.elts
                fields[stmt.target.id] = (ast.unparse(base), any("Choice(" in ast.unparse(e) for e in extras))
            else:
                fields[stmt.target.id] = (ast.unparse(ann), False)
    return fields


def test_widget_uses_only_widgets_of_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert used and used <= set(WIDGETS), sorted(used - set(WIDGETS))


def test_every_parameter_is_bound_to_a_widget_its_connector_accepts():
    bound = {}
    for w in UI.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                assert p.get("stdset") == "0"  # a dynamic property, as the wrapper reads it
                bound[p.find("string").text] = w.get("class")
    fields = parameter_fields()
    assert set(bound) == set(fields)
    for name, (base, choice) in fields.items():
        assert bound[name] in CONNECTORS[base], (name, base, bound[name])
        if bound[name] == "QComboBox":
            assert choice, f"{name}: a QComboBox connector needs a Choice annotation"
        if bound[name] in ("QSpinBox", "QDoubleSpinBox", "QSlider", "ctkSliderWidget"):
            assert "WithinRange" in ast.unparse(next(s for s in ast.walk(TREE) if isinstance(s, ast.AnnAssign)
                                                     and getattr(s.target, "id", None) == name))


def test_mrml_widgets_get_the_scene():
    mrml = {n for n, c in WIDGETS.items() if c.startswith("qMRML") and c != "qMRMLWidget"}
    connected = {c.find("receiver").text for c in UI.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)" and c.find("sender").text == "ASFDA"}
    assert mrml and mrml == connected
    assert UI.find("widget").get("class") == "qMRMLWidget" and UI.find("widget").get("name") == "ASFDA"
    declared = {c.find("class").text for c in UI.iter("customwidget")}
    assert {c for c in WIDGETS.values() if c.startswith(("qMRML", "ctk"))} <= declared


def test_methods_and_slicer_conventions():
    methods = next(ast.literal_eval(n.value) for n in TREE.body
                   if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "METHODS")
    assert methods == ASFDA_METHODS
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in TREE.body if isinstance(n, ast.ClassDef)}
    assert classes["ASFDA"] == ["ScriptedLoadableModule"]
    assert classes["ASFDAWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["ASFDALogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["ASFDATest"] == ["ScriptedLoadableModuleTest"]
    # The GUI never waits on asfda: every long call goes through a BackgroundTask.
    for call in ("runScoring", "runSegmentation", "runFineTuning"):
        assert re.search(rf"self\._start\(lambda progress, cancel: self\.logic\.{call}\(", SOURCE), call
    assert "processEvents" not in SOURCE


def test_cmake_lists_name_the_module_files_and_the_icon_is_a_png():
    cmake = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in cmake
    listed = {m.replace("${MODULE_NAME}", "ASFDA") for m in re.findall(r"^\s+(\$\{MODULE_NAME\}\S+|Resources/\S+)$",
                                                                      cmake, re.M)}
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*") if p.is_file()
               and p.suffix in (".py", ".ui", ".png") and "__pycache__" not in p.parts}
    assert listed == on_disk
    ext = (ROOT / "bindings" / "slicer" / "CMakeLists.txt").read_text()
    assert "add_subdirectory(ASFDA)" in ext and "find_package(Slicer REQUIRED)" in ext
    png = (MODULE / "Resources" / "Icons" / "ASFDA.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (128, 128)
    assert len(png) < 16_000


def test_the_slicer_logic_class_offers_what_the_widget_calls():
    """ASFDALogic hands the work to ASFDALib.AsfdaLogic by name: each delegated name exists there,
    and every self.logic.<name> the widget uses is delegated or defined on ASFDALogic itself."""
    from ASFDALib import AsfdaLogic
    from synthetic_data import BUNDLE

    cls = next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == "ASFDALogic")
    delegated = next(ast.literal_eval(s.value.args[0]) for s in cls.body
                     if isinstance(s, ast.Assign) and ast.unparse(s.targets[0]) == "_DELEGATED")
    own = {s.name for s in cls.body if isinstance(s, ast.FunctionDef)}
    impl = AsfdaLogic(BUNDLE)
    assert delegated and all(hasattr(impl, name) for name in delegated), sorted(n for n in delegated
                                                                               if not hasattr(impl, n))
    used = set(re.findall(r"self\.logic\.(\w+)", SOURCE)) | set(re.findall(r"\blogic\.(\w+)\(", SOURCE))
    assert used and used <= delegated | own, sorted(used - delegated - own)
