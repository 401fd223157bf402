"""The file conventions: strict JSON (non-finite numbers as strings, read back), guarded reading, CSV cells."""

import json
import math

import pytest

from autogradlens._files import csv_cell, depth, dumps, finite, loads, number, numbers
from autogradlens.errors import LensValueError


def strict(text: str):
    def no(tok):
        raise AssertionError(f"{tok} token in {text!r}")
    return json.loads(text, parse_constant=no)


def test_dumps_writes_nonfinite_numbers_as_strings_and_number_reads_them_back():
    obj = {"ratio": math.inf, "low": -math.inf, "bad": math.nan, "ok": 1.5, "n": [1, (2.0, math.inf)], "s": "inf"}
    text = dumps(obj)
    doc = strict(text)
    assert doc == {"ratio": "inf", "low": "-inf", "bad": "nan", "ok": 1.5, "n": [1, [2.0, "inf"]], "s": "inf"}
    assert number(doc["ratio"]) == math.inf and number(doc["low"]) == -math.inf and math.isnan(number(doc["bad"]))
    assert number(doc["ok"]) == 1.5 and number("mean") == "mean" and number(None) is None
    assert numbers([[1.0, "inf"], ["-inf", 2]]) == [[1.0, math.inf], [-math.inf, 2]]


def test_dumps_fast_path_is_plain_json_and_finite_leaves_finite_values_alone():
    obj = {"a": [1, 2.5, None, True, "x"], "b": {"c": -0.0}}
    assert dumps(obj) == json.dumps(obj) and finite(obj) == obj
    assert dumps({"x": math.inf}, indent=1) == '{\n "x": "inf"\n}'


@pytest.mark.parametrize("text,msg", [
    ("", "the text is empty"),
    ("   \n", "the text is empty"),
    ("{nope", "not a doc: Expecting property name"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' * 150 + "1" + "}" * 150, "nested too deeply"),
    (5, "expected JSON text, got int"),
])
def test_loads_refuses_damaged_text_with_a_value_error(text, msg):
    with pytest.raises(LensValueError, match=msg) as e:
        loads(text, what="doc")
    assert isinstance(e.value, ValueError)


def test_loads_accepts_bytes_and_old_nan_tokens():
    assert loads(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert loads('[Infinity]') == [math.inf]  # files written before the strict convention still read
    assert depth(loads("[" * 100 + "]" * 100, max_depth=100)) == 100  # the limit itself is allowed


def test_depth_is_iterative():
    deep = []
    for _ in range(50_000):
        deep = [deep]
    assert depth(deep) == 50_001 and depth(1) == 0 and depth({"a": {"b": []}}) == 3


@pytest.mark.parametrize("cell,out", [
    ("=HYPERLINK(\"http://x\",\"click\")", "'=HYPERLINK(\"http://x\",\"click\")"),
    ("+1+2", "'+1+2"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("net.0.weight", "net.0.weight"), ("", ""), ("-inf", "-inf"), ("inf", "inf"),
    (-1.5, -1.5), (3, 3), (None, None), (True, True),
])
def test_csv_cell_neutralises_formulas_and_keeps_numbers(cell, out):
    assert csv_cell(cell) == out
