"""`import_lancedb` defers the REST namespace client's package `__init__` (`resources.table.lancedb_import`):
tables still write, index and search, the client's classes still import, and nothing is deferred
once the client is imported; `pyarrow_without_pandas_yet` lets a search run without importing
pandas, which still imports and converts after it. Each case runs in a fresh interpreter, since a
test process has usually imported lancedb already."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def fresh(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tables_write_index_and_search_and_the_client_still_imports(tmp_path):
    out = fresh("""
        import sys
        import numpy as np
        from resources.table.lancedb_import import CLIENT, import_lancedb
        from resources.table.similarity import SearchFilter, Similarity
        from resources.table.store import TableStore
        from resources.testing.synthetic_table import clustered, synthetic_rows

        import_lancedb()
        client = sys.modules[CLIENT]
        assert "__getattr__" in vars(client) and f"{CLIENT}.api" not in sys.modules, "deferred"
        store = TableStore(uri=sys.argv[1], ann_min_rows=1000, rows_per_partition=200, exact_scan_max_rows=0)
        vectors = clustered(2000, np.random.default_rng(0))
        assert store.write_partition(2022, "r", synthetic_rows(vectors, region="r").to_batches(), 128).rows == 2000
        assert store.refresh_index().action == "trained"
        hits = Similarity(store).search(vectors[7], k=5, filters=SearchFilter(years=[2022]))
        assert hits.num_rows == 5 and hits["similarity"][0].as_py() > 0.99
        assert store.partition_counts() == [((2022, "r"), 2000)] and store.delete_region("r") == 2000
        assert f"{CLIENT}.api" not in sys.modules, "a local table never needed the client's APIs"

        from lance_namespace_urllib3_client import ApiClient, Configuration, JsonArrowSchema, TableApi, __version__
        from lance_namespace_urllib3_client.api.table_api import TableApi as Direct
        from lance_namespace_urllib3_client.models import JsonArrowSchema as Model
        import importlib.metadata
        assert TableApi is Direct and JsonArrowSchema is Model and "__getattr__" not in vars(client)
        assert __version__ == importlib.metadata.version(CLIENT)
        assert client.ApiClient is ApiClient and not hasattr(client, "no_such_name")
        TableApi(ApiClient(Configuration(host="http://localhost:1")))
        print("ok")
    """, str(tmp_path / "db"))
    assert out.strip() == "ok"


def test_the_first_attribute_read_runs_the_real_init_once_across_threads():
    out = fresh("""
        import sys, threading
        from resources.table.lancedb_import import CLIENT, import_lancedb

        import_lancedb()
        client = sys.modules[CLIENT]
        found = []
        readers = [threading.Thread(target=lambda: found.append(client.TableApi)) for _ in range(4)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        assert len(found) == 4 and len(set(found)) == 1 and found[0].__module__ == f"{CLIENT}.api.table_api"
        print("ok")
    """)
    assert out.strip() == "ok"


def test_nothing_is_deferred_once_the_client_is_imported():
    out = fresh("""
        import sys
        import lance_namespace_urllib3_client as client
        from resources.table.lancedb_import import CLIENT, import_lancedb

        import_lancedb()
        assert sys.modules[CLIENT] is client and "__getattr__" not in vars(client)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_search_runs_without_pandas_and_pandas_still_works_after(tmp_path):
    out = fresh("""
        import sys
        import numpy as np
        from resources.table.lancedb_import import pyarrow_without_pandas_yet

        pyarrow_without_pandas_yet()
        from resources.table.similarity import SearchFilter, Similarity
        from resources.table.store import TableStore
        from resources.testing.synthetic_table import clustered, synthetic_rows

        store = TableStore(uri=sys.argv[1], ann_min_rows=1000, rows_per_partition=200, exact_scan_max_rows=0)
        vectors = clustered(2000, np.random.default_rng(0))
        store.write_partition(2022, "r", synthetic_rows(vectors, region="r").to_batches(), 128)
        store.refresh_index()
        hits = Similarity(store).search(vectors[7], k=5, filters=SearchFilter(years=[2022]))
        assert hits.num_rows == 5 and hits["similarity"][0].as_py() > 0.99
        assert "pandas" not in sys.modules, "nothing in a search needed pandas"

        import pandas as pd  # still importable, and pyarrow converts both ways once asked to
        import pyarrow as pa
        frame = hits.to_pandas()
        assert isinstance(frame, pd.DataFrame) and len(frame) == 5
        assert pa.table(pd.DataFrame({"a": [1, 2]}))["a"].to_pylist() == [1, 2]
        print("ok")
    """, str(tmp_path / "db"))
    assert out.strip() == "ok"


def test_pandas_imported_first_is_left_alone():
    out = fresh("""
        import pandas as pd
        import pyarrow as pa
        from resources.table.lancedb_import import pyarrow_without_pandas_yet

        pyarrow_without_pandas_yet()
        assert pa.table(pd.DataFrame({"a": [1]}))["a"].to_pylist() == [1]
        print("ok")
    """)
    assert out.strip() == "ok"
