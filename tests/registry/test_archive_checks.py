"""The static archive checks: expression grammars, the canonical zip view, code scans."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from jacserve.server.errors import InvalidArgument
from jacserve.server.registry import ArchiveFormat, detect_format
from jacserve.server.registry.expressions import (
    MAX_EXPRESSION_CHARS,
    ExpressionError,
    check_guard,
    check_sympy_repr,
)
from tests import hostile

LIMIT = 1 << 26


class _Shapes(torch.nn.Module):
    """Symbolic sizes of many kinds: sums, products, floor division, modulo, slicing."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x, y])
        halves = z.reshape(-1, 2, 4)[:, 0]
        strided = z[1::3]
        return halves.sum() + strided.sum() + x.repeat(2, 1)[::3].sum() + z[:-1].sum()


def _exported_strings() -> tuple[set[str], list[str]]:
    """Every expr_str and guard torch wrote for a few dynamic-shape programs."""
    b, c = torch.export.Dim("b", min=2, max=1024), torch.export.Dim("c")
    programs = [
        torch.export.export(
            _Shapes(), (torch.randn(4, 4), torch.randn(6, 4)), dynamic_shapes=({0: 2 * b}, {0: c})
        ),
        torch.export.export(hostile.Dynamic(), (torch.randn(4, 4),), dynamic_shapes=({0: 2 * b},)),
    ]
    expressions, guards = set(), []
    for program in programs:
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        archive = zipfile.ZipFile(buffer)
        name = next(n for n in archive.namelist() if "/models/" in n)
        text = archive.read(name).decode()
        document = json.loads(text)
        guards += document["guards_code"]
        marker = '"expr_str": '
        for piece in text.split(marker)[1:]:
            expressions.add(json.JSONDecoder().raw_decode(piece)[0])
    return expressions, guards


EXPRESSIONS, GUARDS = _exported_strings()


def test_torch_writes_symbolic_sizes_and_guards_here():
    assert len(EXPRESSIONS) > 5 and any("FloorDiv" in e for e in EXPRESSIONS) and GUARDS


@pytest.mark.parametrize("text", sorted(EXPRESSIONS))
def test_every_expression_torch_writes_is_accepted(text):
    check_sympy_repr(text)


@pytest.mark.parametrize("text", GUARDS)
def test_every_guard_torch_writes_is_accepted(text):
    check_guard(text)


@pytest.mark.parametrize(
    "text",
    [
        "Integer(-1)",
        "Rational(1, 2)",
        "Float('1.5', precision=53)",
        "Max(Integer(3), Symbol('s0', integer=True, positive=True))",
        "Mod(Symbol('u3', integer=True), Integer(4))",
        "CeilToInt(IntTrueDiv(Symbol('s12', integer=True, positive=True), Integer(3)))",
        "And(StrictLessThan(Symbol('s0', integer=True), int_oo), true)",
        "Symbol('zf0', real=True)",
        "-oo",
    ],
)
def test_other_sympy_forms_torch_writes_are_accepted(text):
    check_sympy_repr(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__('os')", "'__import__' is not one torch writes"),
        ("Integer(__import__('os').system('id'))", "'__import__'"),
        ("().__class__", "unexpected '('"),
        ("Symbol('s0').__class__", "unexpected '.'"),
        ("Integer.__class__", "'Integer.__class__' is not one torch writes"),
        ("lambda: 0", "unexpected character ':'"),
        ("'text'", "unexpected \"'text'\""),
        ("Symbol('os', integer=True)", "is not a name torch writes"),
        ("Symbol('s0', evaluate=True)", "keyword evaluate="),
        ("Add(Integer(1), [1])", "unexpected '['"),
        ("Integer(1); Integer(2)", "unexpected character ';'"),
        ('Symbol("s0")', "unexpected character '\"'"),
        ("Integer(1) Integer(2)", "after the expression"),
        ("Add(" * 300 + "Integer(1)" + ")" * 300, "nests deeper"),
        ("Integer(1)+" * 3000, "characters long"),
        ("Add(Integer(1)", "ends too early"),
    ],
)
def test_sympy_strings_outside_the_grammar_are_refused(text, fragment):
    with pytest.raises(ExpressionError) as info:
        check_sympy_repr(text)
    assert fragment in str(info.value)


def test_a_string_at_the_length_cap_is_parsed_and_one_longer_is_not():
    check_sympy_repr("Integer(1)" + " " * (MAX_EXPRESSION_CHARS - 10))
    with pytest.raises(ExpressionError, match="characters long"):
        check_sympy_repr("Integer(1)" + " " * (MAX_EXPRESSION_CHARS - 9))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__('os').system('id') == 0", "'__import__'"),
        ("L['x'].size()[0] == L['x'].__class__", "method '__class__'"),
        ("L['x\"'].size()[0] == 2", "not a Python identifier"),
        ("L['a b'].size()[0] == 2", "not a Python identifier"),
        ("L['x'].size()[0] == (lambda: 1)()", "unexpected character ':'"),
        ("L['x'].size()[0] == lambda", "name 'lambda' is not one torch writes"),
        ("getattr(L, 'x') == 1", "'getattr'"),
        ("L['x'].size()[0] == 'text'", "unexpected \"'text'\""),
        ("math.system(1) == 0", "'math.system'"),
    ],
)
def test_guards_outside_the_grammar_are_refused(text, fragment):
    with pytest.raises(ExpressionError) as info:
        check_guard(text)
    assert fragment in str(info.value)


def test_detect_format_reads_an_open_file_and_restores_its_position(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(hostile.dynamic_export())
    with path.open("rb") as f:
        f.seek(5)
        assert detect_format(f, max_uncompressed_bytes=LIMIT) is ArchiveFormat.TORCH_EXPORT
        assert f.tell() == 5


@pytest.mark.parametrize(
    "spelling",
    [
        "def __setstate__(self, state):",
        "def  __setstate__ \t(self, state):",
        "def \\\n    __setstate__(self, state):",
        "# __setstate__ in a comment",
        "x = self.__setstate__",
    ],
)
def test_setstate_is_refused_however_it_is_written(spelling):
    data = hostile.good_script()
    code = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith(".py"))
    source = zipfile.ZipFile(io.BytesIO(data)).read(code) + f"\n{spelling}\n".encode()
    hidden = hostile.rewrite(data, {code.split("/", 1)[1]: source})
    with pytest.raises(InvalidArgument, match="mentions __setstate__"):
        detect_format(hidden, max_uncompressed_bytes=LIMIT)


def test_an_encrypted_entry_is_refused():
    data = hostile.good_script()
    old = zipfile.ZipFile(io.BytesIO(data)).infolist()[-1]
    patched = bytearray(data)
    central = data.rindex(b"PK\x01\x02", 0, data.rindex(old.filename.encode()))
    patched[central + 8] |= 0x1  # the central directory's flag bits
    with pytest.raises(InvalidArgument, match="is encrypted"):
        detect_format(bytes(patched), max_uncompressed_bytes=LIMIT)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda c: c.replace(b'"config"', b'"config": {}, "config"', 1), "duplicate key"),
        (lambda c: c.replace(b'"use_pickle": false', b'"use_pickle": "yes"', 1), "as a pickle"),
        (lambda c: c.replace(b'"weight_0"', b'"../weight_0"', 1), "plain file name"),
        (lambda c: "\ufeff".encode() + c, "not strict JSON"),
        (lambda c: c.replace(b'"is_param": true', b'"is_param": NaN', 1), "NaN is not JSON"),
    ],
)
def test_payload_configs_are_parsed_strictly(change, fragment):
    data = hostile.good_export()
    name = "model_weights_config.json"
    full = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith(name))
    config = zipfile.ZipFile(io.BytesIO(data)).read(full)
    with pytest.raises(InvalidArgument, match=fragment):
        detect_format(hostile.rewrite(data, {name: change(config)}), max_uncompressed_bytes=LIMIT)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("data/weights/model.pt", "legacy pickled format"),
        ("data/CONSTANTS/Custom_Obj_0", "as a pickle"),
        ("data/AOTInductor/model/model.so", "AOTInductor"),
    ],
)
def test_export_refusals_ignore_letter_case(name, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        detect_format(
            hostile.rewrite(hostile.good_export(), {}, {name: b"x"}), max_uncompressed_bytes=LIMIT
        )


def test_sample_inputs_are_emptied_whatever_their_case():
    from jacserve.server.registry.archive import strip_sample_inputs

    data = hostile.rewrite(
        hostile.good_export(),
        {"sample_inputs/model.pt": None},
        {"DATA/Sample_Inputs/model.pt": b"x"},
    )
    stripped = zipfile.ZipFile(io.BytesIO(strip_sample_inputs(data)))
    assert [stripped.read(n) for n in stripped.namelist() if "ample_" in n] == [b""]
