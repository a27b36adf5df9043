"""capsa.jsonlite must agree with the json module on everything capsa reads and writes."""
import json

import pytest

from capsa import jsonlite

SAMPLES = [
    {"ociVersion": "1.2.0", "process": {"args": ["sh", "-c", "echo \"hi\"\n"], "env": ["A=ü"],
                                        "user": {"uid": 0}, "rlimits": []},
     "n": -12, "f": 1.5e-3, "big": 2 ** 64 - 1, "t": True, "x": None, "empty": {}, "list": []},
    [1, [2, [3, {"a": [{}]}]]],
    "plain",
    0,
]


@pytest.mark.parametrize("value", SAMPLES)
def test_round_trip_matches_json(value):
    text = json.dumps(value)
    assert jsonlite.loads(text) == json.loads(text)
    assert jsonlite.loads(text.encode()) == value
    assert jsonlite.dumps(value) == json.dumps(value, separators=(",", ":"))
    assert jsonlite.dumps(value, compact=False) == json.dumps(value)
    assert jsonlite.dumps(value, indent=2) == json.dumps(value, indent=2)


def test_whitespace_and_bom():
    assert jsonlite.loads(" \n{\"a\": 1}\n ") == {"a": 1}
    assert jsonlite.loads(b"\xef\xbb\xbf[1]") == [1]


@pytest.mark.parametrize("bad", ["", "{", "[1,]", "{} {}", "{'a': 1}", "tru"])
def test_malformed_raises_value_error(bad):
    with pytest.raises(ValueError):
        jsonlite.loads(bad)


def test_sort_keys_matches_json():
    value = {"b": [3, {"z": 1, "a": None}], "a": "ü"}
    assert jsonlite.dumps(value, sort_keys=True) == json.dumps(value, sort_keys=True,
                                                               separators=(",", ":"))
