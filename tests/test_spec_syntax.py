"""The spec grammar both halves share (maskclip_core.data.spec_syntax), checked on hand-written specs."""
from __future__ import annotations

import pytest

from maskclip_core.data.spec_syntax import SpecParts, parse_options, split_spec
from maskclip_core.errors import DataError

TYPES = {"size": int, "scale": float}


@pytest.mark.parametrize("spec, parts", [
    ("shapes", SpecParts("shapes", "", False)),
    (" Shapes/Shape :test=5", SpecParts("shapes/shape", "test=5", True)),
    ("wds:", SpecParts("wds", "", True)),
    # Only the first colon separates: the rest keeps its own colons.
    ("wds:pipe:curl -s http://h/{0..1}.tar", SpecParts("wds", "pipe:curl -s http://h/{0..1}.tar", True)),
    ("clip_benchmark:cars@C:/data", SpecParts("clip_benchmark", "cars@C:/data", True)),
])
def test_split_spec(spec, parts):
    assert split_spec(spec) == parts


def test_options_are_typed_and_spacing_and_empty_items_are_ignored():
    assert parse_options(" size = 3 ,, scale=1.5 ,", "s", TYPES) == {"size": 3, "scale": 1.5}
    assert parse_options("", "s", TYPES) == {}


@pytest.mark.parametrize("text, message", [
    ("size", "bad option 'size' in data spec 'S' (use key=value)"),
    ("=3", "bad option '=3'"),
    ("colour=red", "unknown option 'colour' in data spec 'S' (options: size, scale)"),
    ("size=1.5", "option size='1.5' in data spec 'S' is not a valid int"),
    ("scale=big", "is not a valid float"),
])
def test_errors_name_the_item_and_the_spec(text, message):
    with pytest.raises(DataError) as err:
        parse_options(text, "S", TYPES)
    assert message in str(err.value)
