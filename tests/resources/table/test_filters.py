"""The one builder of the embedding table's SQL filters: values stay values."""

import lancedb
import pyarrow as pa
import pytest

from resources.table.filters import all_of, equals, is_in, literal, partition_filter


def test_literals_are_quoted_or_cast():
    assert literal("it's") == "'it''s'" and literal(3) == "3" and literal(0.5) == "0.5"
    assert partition_filter(2022, "demo") == "year = 2022 AND region = 'demo'"
    assert all_of(None, "", equals("a", 1)) == "a = 1" and all_of() is None
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            literal(bad)


def test_a_hostile_value_matches_only_itself_in_a_real_table(tmp_path):
    """A region or encoder id written as SQL is compared as text: it neither widens nor breaks the filter."""
    hostile = "x' OR '1'='1"
    table = lancedb.connect(tmp_path).create_table("t", pa.table({"region": ["demo", hostile, "other"],
                                                                   "year": [2022, 2022, 2021]}))
    assert table.count_rows(equals("region", hostile)) == 1
    assert table.count_rows(is_in("region", [hostile, "demo"])) == 2
    assert table.count_rows(partition_filter(2022, "demo")) == 1
