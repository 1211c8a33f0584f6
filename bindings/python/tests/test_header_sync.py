"""The ctypes declarations of asfda._lib cannot drift from include/asfda.h.

The header is preprocessed by the C compiler (`cc -E`, against stub <stddef.h>, <stdint.h> and
<stdbool.h> for LP64 so the result does not depend on the system's libc headers) and parsed with
pycparser. Then:

- every function declared in _lib (every ctypes function object of the module or of the loaded
  CDLL) exists in the header with the same return type and argument types, and has its argtypes
  set;
- every ctypes Structure of _lib has exactly the fields of the C struct named "Asfda" + its class
  name: names, order and types (nested structs, arrays and function pointers included);
- every header function is declared in _lib or listed in UNWRAPPED.

ctypes cannot express `const`, enums or opaque types, so those are compared as what they are in
the ABI: qualifiers are ignored, an enum is an int, and a pointer to an opaque struct is a void
pointer. Integer types compare by size and signedness (ctypes itself makes c_size_t an alias of
c_uint64 on LP64). The tests at the end feed deliberately wrong declarations to the same checks
and expect each difference to be reported.
"""
from __future__ import annotations

import ctypes as C
import shutil
import subprocess
import types
from pathlib import Path

import pytest

try:
    import pycparser
    from pycparser import c_ast
except ImportError as e:  # never skip: the check must run wherever the Python tests run
    raise ImportError("pycparser is missing: run `make venv` (scripts/requirements-test.txt pins it)") from e

from asfda import _lib

HEADER = Path(__file__).resolve().parents[3] / "include" / "asfda.h"

#: Header functions the Python package deliberately does not wrap, and why.
UNWRAPPED = {
    "asfda_last_error_copy": "Python reads the thread's message with asfda_last_error_message",
}

#: Arguments declared `void *` (c_void_p) in _lib where the header has a byte pointer
#: (`const uint8_t *`): numpy buffers are passed by address, an int, which a POINTER(c_uint8)
#: argtype would refuse. The ABI is the same (a data pointer).
BYTE_BUFFER_ARGS = {("asfda_volume_from_buffer", 0)}

#: Python field names that differ from the C ones (Python keywords).
FIELD_RENAMES = {"lambda_": "lambda"}

# Stub headers for LP64 Linux: only what the generated header uses.
STUBS = {
    "stddef.h": "typedef unsigned long size_t;\ntypedef long ptrdiff_t;\n#define NULL ((void *)0)\n",
    "stdint.h": "\n".join(
        f"typedef {c} {name};"
        for name, c in [
            ("int8_t", "signed char"), ("int16_t", "short"), ("int32_t", "int"), ("int64_t", "long"),
            ("uint8_t", "unsigned char"), ("uint16_t", "unsigned short"), ("uint32_t", "unsigned int"),
            ("uint64_t", "unsigned long"), ("intptr_t", "long"), ("uintptr_t", "unsigned long"),
        ]
    ) + "\n",
    "stdbool.h": "#define bool _Bool\n#define true 1\n#define false 0\n",
}

# ---- the header as canonical type descriptions ------------------------------------------------

_BASE = {
    "char": C.c_char, "signed char": C.c_byte, "unsigned char": C.c_ubyte,
    "short": C.c_short, "unsigned short": C.c_ushort, "int": C.c_int, "unsigned int": C.c_uint,
    "unsigned": C.c_uint, "long": C.c_long, "unsigned long": C.c_ulong, "long long": C.c_longlong,
    "unsigned long long": C.c_ulonglong, "_Bool": C.c_bool, "float": C.c_float, "double": C.c_double,
}


class Header:
    """Functions, structs and typedefs of the parsed header."""

    def __init__(self, ast: c_ast.FileAST):
        self.typedefs: dict[str, c_ast.Node] = {}
        self.structs: dict[str, list] = {}  # name -> fields (c_ast.Decl); opaque structs absent
        self.functions: dict[str, c_ast.FuncDecl] = {}
        for node in ast.ext:
            self._collect_structs(node)
            if isinstance(node, c_ast.Typedef):
                self.typedefs[node.name] = node.type
            elif isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl):
                self.functions[node.name] = node.type

    def _collect_structs(self, node):
        if isinstance(node, c_ast.Struct) and node.decls is not None:
            self.structs[node.name] = node.decls
        for _, child in node.children():
            self._collect_structs(child)

    def describe(self, t) -> tuple:
        """A canonical description of a C type node."""
        if isinstance(t, c_ast.Decl):
            return self.describe(t.type)
        if isinstance(t, c_ast.Typename):
            return self.describe(t.type)
        if isinstance(t, c_ast.TypeDecl):
            return self.describe(t.type)
        if isinstance(t, c_ast.PtrDecl):
            inner = t.type
            while isinstance(inner, c_ast.TypeDecl) and isinstance(inner.type, c_ast.IdentifierType) \
                    and inner.type.names[-1] in self.typedefs:
                inner = self.typedefs[inner.type.names[-1]]
            if isinstance(inner, c_ast.FuncDecl):
                return self._function(inner)
            target = self.describe(t.type)
            if target[0] == "struct" and target[1] not in self.structs:
                target = ("void",)  # an opaque handle: ctypes can only say void *
            return ("ptr", target)
        if isinstance(t, c_ast.ArrayDecl):
            return ("array", int(t.dim.value), self.describe(t.type))
        if isinstance(t, c_ast.FuncDecl):
            return self._function(t)
        if isinstance(t, c_ast.Struct):
            return ("struct", t.name)
        if isinstance(t, c_ast.Enum):
            return describe_ctypes(C.c_int)  # a C enum is an int on this ABI
        if isinstance(t, c_ast.IdentifierType):
            name = " ".join(t.names)
            if name in self.typedefs:
                return self.describe(self.typedefs[name])
            if name == "void":
                return ("void",)
            if name not in _BASE:
                raise ValueError(f"unknown C type {name!r}")
            return describe_ctypes(_BASE[name])
        raise ValueError(f"unhandled C type node {type(t).__name__}")

    def _function(self, f: c_ast.FuncDecl) -> tuple:
        params = f.args.params if f.args is not None else []
        args = tuple(self.describe(p) for p in params)
        if args == (("void",),):  # f(void)
            args = ()
        return ("fn", self.describe(f.type), args)

    def signature(self, name: str) -> tuple:
        return self._function(self.functions[name])


def describe_ctypes(t) -> tuple:
    """The same canonical description for a ctypes type (None is void)."""
    if t is None:
        return ("void",)
    if isinstance(t, type) and issubclass(t, C._CFuncPtr):
        return ("fn", describe_ctypes(t._restype_), tuple(describe_ctypes(a) for a in t._argtypes_))
    if isinstance(t, type) and issubclass(t, C.Structure):
        return ("struct", "Asfda" + t.__name__)
    if isinstance(t, type) and issubclass(t, C.Array):
        return ("array", t._length_, describe_ctypes(t._type_))
    if isinstance(t, type) and issubclass(t, C._Pointer):
        return ("ptr", describe_ctypes(t._type_))
    code = getattr(t, "_type_", None)
    if code == "z":
        return ("ptr", describe_ctypes(C.c_char))
    if code == "P":
        return ("ptr", ("void",))
    if code == "c":
        return ("char",)
    if code == "?":
        return ("bool",)
    if code in ("f", "d", "g"):
        return ("float", C.sizeof(t))
    if isinstance(code, str) and code in "bBhHiIlLqQ":
        return ("int", C.sizeof(t), code.islower())
    raise ValueError(f"unhandled ctypes type {t!r}")


# ---- the checks -------------------------------------------------------------------------------

def declared_functions(module=_lib) -> dict:
    """name -> ctypes function object, for every asfda_* function _lib declares or has fetched."""
    found = {}
    for value in list(vars(module).values()) + list(vars(module.lib).values()):
        if isinstance(value, C._CFuncPtr) and getattr(value, "__name__", "").startswith("asfda_"):
            found[value.__name__] = value
    return found


def structures(module=_lib) -> list:
    return [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, C.Structure)
            and v is not C.Structure]


def function_problems(header: Header, functions: dict) -> list[str]:
    problems = []
    for name, fn in sorted(functions.items()):
        if name not in header.functions:
            problems.append(f"{name}: declared in _lib but not in asfda.h")
            continue
        if fn.argtypes is None:
            problems.append(f"{name}: no argtypes in _lib (ctypes would guess every argument)")
            continue
        want = header.signature(name)
        got = ("fn", describe_ctypes(fn.restype), tuple(describe_ctypes(a) for a in fn.argtypes))
        if got[1] != want[1]:
            problems.append(f"{name}: returns {got[1]} in _lib, {want[1]} in asfda.h")
        if len(got[2]) != len(want[2]):
            problems.append(f"{name}: {len(got[2])} arguments in _lib, {len(want[2])} in asfda.h")
        else:
            for i, (g, w) in enumerate(zip(got[2], want[2])):
                if (name, i) in BYTE_BUFFER_ARGS and g == ("ptr", ("void",)) and w[0] == "ptr" \
                        and w[1][:2] == ("int", 1):
                    continue
                if g != w:
                    problems.append(f"{name}: argument {i} is {g} in _lib, {w} in asfda.h")
    return problems


def structure_problems(header: Header, classes: list) -> list[str]:
    problems = []
    for cls in classes:
        c_name = "Asfda" + cls.__name__
        if c_name not in header.structs:
            problems.append(f"{cls.__name__}: no struct {c_name} in asfda.h")
            continue
        want = [(d.name, header.describe(d)) for d in header.structs[c_name]]
        got = [(FIELD_RENAMES.get(n, n), describe_ctypes(t)) for n, t, *_ in cls._fields_]
        if [n for n, _ in got] != [n for n, _ in want]:
            problems.append(f"{cls.__name__}: fields {[n for n, _ in got]} in _lib, {[n for n, _ in want]} in asfda.h")
            continue
        for (n, g), (_, w) in zip(got, want):
            if g != w:
                problems.append(f"{cls.__name__}.{n}: {g} in _lib, {w} in asfda.h")
    return problems


def coverage_problems(header: Header, functions: dict) -> list[str]:
    missing = sorted(set(header.functions) - set(functions) - set(UNWRAPPED))
    stale = sorted(set(UNWRAPPED) & set(functions))
    return ([f"{n}: in asfda.h but neither declared in _lib nor listed in UNWRAPPED" for n in missing]
            + [f"{n}: listed in UNWRAPPED but declared in _lib" for n in stale])


# ---- tests ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def header(tmp_path_factory) -> Header:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.fail("no C compiler (cc) to preprocess asfda.h")
    stubs = tmp_path_factory.mktemp("stub-include")
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
    # __attribute__ is dropped: pycparser parses standard C only (e.g. warn_unused_result markers).
    text = subprocess.run(
        [cc, "-E", "-P", "-nostdinc", "-I", str(stubs), "-D__attribute__(x)=", "-std=c11", str(HEADER)],
        check=True, capture_output=True, text=True,
    ).stdout
    h = Header(pycparser.CParser().parse(text, str(HEADER)))
    assert len(h.functions) > 40 and "AsfdaEngineOptions" in h.structs, "the header did not parse as expected"
    return h


def test_function_signatures_match_the_header(header):
    functions = declared_functions()
    assert len(functions) > 40
    assert function_problems(header, functions) == []


def test_structures_match_the_header(header):
    classes = structures()
    assert {"RuntimeOptions", "EngineOptions", "FineTuneOptions", "StepReport"} <= {c.__name__ for c in classes}
    assert structure_problems(header, classes) == []


def test_every_header_function_is_declared_or_listed_unwrapped(header):
    assert coverage_problems(header, declared_functions()) == []


# The checks must see each kind of difference: deliberately wrong declarations.

def fake_function(name, argtypes, restype=C.c_int):
    return types.SimpleNamespace(__name__=name, argtypes=argtypes, restype=restype)


def test_a_wrong_argument_type_is_reported(header):
    right = _lib.volume_save.argtypes
    wrong = {"asfda_volume_save": fake_function("asfda_volume_save", [right[0], right[1], C.c_int64])}
    assert function_problems(header, wrong) == [
        "asfda_volume_save: argument 2 is ('int', 8, True) in _lib, ('int', 4, True) in asfda.h"
    ]


def test_wrong_arity_return_type_and_callback_signature_are_reported(header):
    wrong_progress = C.CFUNCTYPE(C.c_bool, C.c_void_p, C.c_float)
    bad = {
        "asfda_volume_free": fake_function("asfda_volume_free", [], None),
        "asfda_selection_count": fake_function("asfda_selection_count", [C.c_void_p], C.c_uint32),
        "asfda_score_volume": fake_function(
            "asfda_score_volume", [wrong_progress if a is _lib.PROGRESS_FN else a for a in _lib.score_volume.argtypes]
        ),
        "asfda_no_such_function": fake_function("asfda_no_such_function", []),
        "asfda_version": fake_function("asfda_version", None, C.c_char_p),
    }
    problems = function_problems(header, bad)
    assert "asfda_volume_free: 0 arguments in _lib, 1 in asfda.h" in problems
    assert any(p.startswith("asfda_selection_count: returns ('int', 4, False)") for p in problems)
    assert any(p.startswith("asfda_score_volume: argument") and "('float', 4)" in p for p in problems)
    assert "asfda_no_such_function: declared in _lib but not in asfda.h" in problems
    assert any(p.startswith("asfda_version: no argtypes") for p in problems)
    assert len(problems) == 5, problems


def test_wrong_structures_are_reported(header):
    class ReadOptions(C.Structure):  # fields swapped
        _fields_ = [("nonfinite", C.c_int32), ("max_voxels", C.c_uint64), ("replace_value", C.c_float)]

    class ScoreValues(C.Structure):  # a field's type
        _fields_ = [(n, C.c_float if n == "asd" else t) for n, t in _lib.ScoreValues._fields_]

    class FineTuneOptions(C.Structure):  # an array's length
        _fields_ = [(n, C.c_size_t * 2 if n == "patch_size" else t) for n, t in _lib.FineTuneOptions._fields_]

    class StepReport(C.Structure):  # a field missing
        _fields_ = _lib.StepReport._fields_[:-1]

    class Volume(C.Structure):  # an opaque handle has no fields to mirror
        _fields_ = [("data", C.c_void_p)]

    problems = structure_problems(header, [ReadOptions, ScoreValues, FineTuneOptions, StepReport, Volume])
    assert problems[0].startswith("ReadOptions: fields ['nonfinite', 'max_voxels', 'replace_value'] in _lib")
    assert problems[1] == "ScoreValues.asd: ('float', 4) in _lib, ('float', 8) in asfda.h"
    assert problems[2].startswith("FineTuneOptions.patch_size: ('array', 2,")
    assert problems[3].startswith("StepReport: fields")
    assert problems[4] == "Volume: no struct AsfdaVolume in asfda.h"
    assert len(problems) == 5, problems


def test_an_undeclared_header_function_is_reported(header):
    functions = declared_functions()
    del functions["asfda_volume_to_canonical"]
    assert coverage_problems(header, functions) == [
        "asfda_volume_to_canonical: in asfda.h but neither declared in _lib nor listed in UNWRAPPED"
    ]
