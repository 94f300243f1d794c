"""tasks.py: the vocabulary at the bottom — layouts (some tasks only, VA activation), editions, AU columns,
splits — and that it imports nothing of the project."""

import ast
from pathlib import Path

import pytest

import tasks as T

ROOT = Path(__file__).resolve().parents[1]


def test_imports_nothing_of_the_project():
    tree = ast.parse((ROOT / "tasks.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    project = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    project |= {"data", "models", "utils"}
    assert not imported & project, imported & project


def test_class_and_au_lists():
    assert T.EXPR_NAMES_8 == T.EXPR_NAMES_7 + ("Other",)
    assert T.EXPR_NAMES_6 == T.EXPR_NAMES_7[1:] and T.EXPR_CODES_6 == (1, 2, 3, 4, 5, 6)
    assert len(T.AU_NAMES_8) == 8 and len(T.AU_NAMES_12) == 12
    assert set(T.AU_NAMES_8) - set(T.AU_NAMES_12) == {"AU20"}
    assert {T.BLOCK_OF_TASK[t] for t in T.TASKS} == set(T.BLOCKS)


@pytest.mark.parametrize("name, order, outputs, slices, edition", [
    ("abaw2020", ("expr", "va", "au"), 17, {"expr": (0, 7), "va": (7, 9), "au": (9, 17)}, "abaw2020"),
    ("abaw2021", ("au", "expr", "va"), 22, {"au": (0, 12), "expr": (12, 20), "va": (20, 22)}, "abaw2021"),
    ("mtmt", ("au", "expr", "va"), 22, {"au": (0, 12), "expr": (12, 20), "va": (20, 22)}, "abaw2021"),
    ("abaw3", ("au", "expr", "va"), 22, {"au": (0, 12), "expr": (12, 20), "va": (20, 22)}, "abaw3"),
])
def test_registered_layouts_keep_their_columns(name, order, outputs, slices, edition):
    layout = T.get_layout(name)
    assert layout.order == order and layout.num_outputs == outputs and layout.va_activation == "tanh"
    assert {k: (s.start, s.stop) for k, s in layout.slices.items()} == slices
    assert layout.edition == edition and T.get_edition(layout.edition).name == edition


def test_layouts_with_some_tasks_only():
    expr_only = T.OutputLayout("lsd", ("expr",), 6, T.EXPR_NAMES_6)
    assert expr_only.sizes == {"expr": 6} and expr_only.num_outputs == 6 and expr_only.num_au == 0
    assert expr_only.has("expr") and not expr_only.has("va") and not expr_only.has("au")
    expr_va = T.OutputLayout("ev", ("va", "expr"), 8, T.EXPR_NAMES_8, va_activation="identity")
    assert expr_va.slices == {"va": slice(0, 2), "expr": slice(2, 10)} and expr_va.num_outputs == 10
    assert expr_va.va_activation == "identity"


@pytest.mark.parametrize("kwargs, message", [
    (dict(order=()), "must list"),
    (dict(order=("expr", "expr"), expr_slots=7, expr_names=T.EXPR_NAMES_7), "each once"),
    (dict(order=("face",)), "must list"),
    (dict(order=("expr",), expr_slots=6, expr_names=T.EXPR_NAMES_7), "6 EXPR slots for 7 classes"),
    (dict(order=("va",), expr_slots=7, expr_names=T.EXPR_NAMES_7), "without an EXPR block"),
    (dict(order=("au",)), "AU block needs AU names"),
    (dict(order=("va",), au_names=T.AU_NAMES_8), "AU names need an AU block"),
    (dict(order=("va",), va_activation="sigmoid"), "VA activation 'sigmoid'"),
])
def test_unusable_layouts_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        T.OutputLayout("bad", **kwargs)
    assert "'bad'" in str(e.value) and "\n" not in str(e.value)


def test_layout_lookups():
    assert T.get_layout(T.LAYOUTS["abaw3"]) is T.LAYOUTS["abaw3"]
    with pytest.raises(ValueError, match="unknown output layout 'x'"):
        T.get_layout("x")
    assert T.layout_for_num_outputs(17).name == "abaw2020"
    assert T.layout_for_num_outputs(5) is None
    assert T.layout_for_sizes({"au": 12, "expr": 8, "va": 2}).name == "abaw2021"  # the first registered wins
    with pytest.raises(ValueError, match="unknown edition 'abaw1'"):
        T.get_edition("abaw1")


def test_au_columns_map_names_in_the_wanted_order():
    assert T.au_columns(T.AU_NAMES_12, T.AU_NAMES_12) == list(range(12))
    assert T.au_columns(("AU2", "AU1", "AU4"), ("AU1", "AU4")) == [1, 2]
    cols = T.layout_au_columns(T.get_layout("abaw3"), T.get_edition("abaw2021"))
    assert [T.AU_NAMES_12[c] for c in cols] == list(T.AU_NAMES_12)
    cols = T.au_columns(T.AU_NAMES_12, [a for a in T.AU_NAMES_8 if a != "AU20"])
    assert [T.AU_NAMES_12[c] for c in cols] == ["AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU25"]


def test_a_missing_au_is_one_line_naming_it():
    with pytest.raises(T.MissingAUError, match=r"^labels\.txt: no AU20 \(its AUs: AU1,AU2") as e:
        T.au_columns(T.AU_NAMES_12, T.AU_NAMES_8, "labels.txt")
    assert e.value.missing == ("AU20",)
    with pytest.raises(T.MissingAUError, match="layout 'abaw2020' has no output for AU7,AU10,AU23,AU24,AU26 of "
                                               "abaw2021") as e:
        T.layout_au_columns(T.get_layout("abaw2020"), T.get_edition("abaw2021"))
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    expr_only = T.OutputLayout("lsd", ("expr",), 6, T.EXPR_NAMES_6)
    with pytest.raises(T.MissingAUError, match="has no output for AU1,"):
        T.layout_au_columns(expr_only, T.get_edition("abaw3"))


@pytest.mark.parametrize("spelling, split", [
    ("Train_Set", "Train_Set"), ("Training_Set", "Train_Set"), ("train", "Train_Set"), ("TRAINING", "Train_Set"),
    ("Validation_Set", "Validation_Set"), ("val", "Validation_Set"), ("valid", "Validation_Set"),
    ("validation-set", "Validation_Set"),
])
def test_split_spellings(spelling, split):
    assert T.canonical_split(spelling) == split
    assert split in T.SPLITS


@pytest.mark.parametrize("spelling", ["test", "Test_Set", "", "trainval"])
def test_unknown_splits_are_refused(spelling):
    with pytest.raises(ValueError, match=f"unknown split {spelling!r}: use Train_Set or Validation_Set"):
        T.canonical_split(spelling)
    assert T.TEST_SPLIT not in T.SPLITS
