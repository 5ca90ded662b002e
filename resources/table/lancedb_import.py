"""`import lancedb` without running the package `__init__` of the REST namespace client it never uses here.

lancedb 0.40 imports `lance_namespace`, which imports `lance_namespace_urllib3_client.models`; Python
first runs the package's `__init__`, and that generated OpenAPI client imports every API class
(each method wrapped by pydantic's `validate_call`) and then every model. Measured on 2 cores with
`python -X importtime` (client 0.13): `import lancedb` 1.2 s, of which the client package 0.6 s:
its API classes 0.47 s, and the models 0.13-0.16 s, which `lance_namespace` re-exports and so are
still imported. A table in a folder or on an object store is opened by lancedb's native connection,
which uses neither the APIs nor the `ApiClient` (the REST namespace does).

So, before the first `import lancedb`, the client package is registered as a module whose `__init__`
has not run yet: its `__path__` is the real one, so `lance_namespace_urllib3_client.models` and every
other submodule import on demand as usual, and the first attribute read from the package itself
(`from lance_namespace_urllib3_client import ApiClient`, `__version__`, ...) runs the real `__init__`
in it and answers from there. `import lancedb` then takes 0.6-0.8 s, 0.45 s less. Nothing is
deferred when the client or lancedb is already imported. `tests/resources/table/test_lancedb_import.py` checks that
tables still write, index and search after it and that the client's classes still import.

`pyarrow_without_pandas_yet` is the other half of a fast start, for processes that never hand
pyarrow a DataFrame (`tessera search`). pyarrow imports pandas the first time it checks whether a
value might be a pandas object: at the first `pa.scalar` or `pa.array`, which `pyarrow._dataset`'s
module init makes (an expression literal), so `import lancedb` imports pandas, the biggest piece of
its import time (a fresh `tessera search` took 2.60 s with it and 1.50 s without, `bench/startup.py`).
Where pandas is not yet imported, that check is made once with pandas hidden, so pyarrow records it
as absent for its "is this a pandas object?" checks; pandas itself stays importable, and pyarrow
imports it for real the first time it is asked to convert to pandas (`to_pandas`), from which point
the process is an ordinary pandas-aware one. Until then, a DataFrame given to `pa.table` is not
recognised, which is why only commands that never make one call it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from types import ModuleType

CLIENT = "lance_namespace_urllib3_client"
_lock = threading.Lock()


def import_lancedb() -> ModuleType:
    """`lancedb`, imported with the namespace client's package `__init__` deferred (module doc)."""
    with _lock:
        if "lancedb" not in sys.modules and CLIENT not in sys.modules:
            _defer_package_init(CLIENT)
        import lancedb
    return lancedb


def _defer_package_init(name: str) -> None:
    """Register package `name` without running its `__init__`, which runs on the first attribute
    read from the package (submodule imports need only its `__path__`)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed, or not a package: an ordinary import follows
    package = importlib.util.module_from_spec(spec)
    initialising = threading.RLock()  # re-entrant: the real __init__ may read the package's attributes
    ran = False

    def __getattr__(attribute: str):
        nonlocal ran
        with initialising:
            if not ran:
                ran = True
                spec.loader.exec_module(package)
                if package.__dict__.get("__getattr__") is __getattr__:
                    del package.__dict__["__getattr__"]  # from now on an ordinary module
        try:
            return package.__dict__[attribute]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}") from None

    package.__getattr__ = __getattr__
    sys.modules[name] = package


class _HidePandas(importlib.abc.MetaPathFinder):
    """Answers every import of pandas, or of a pandas submodule, with ModuleNotFoundError."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden from pyarrow's first check)", name=name)
        return None


def pyarrow_without_pandas_yet() -> None:
    """Let pyarrow's first "is pandas installed?" check find no pandas (module doc): a command that
    never gives pyarrow a DataFrame then starts without importing pandas."""
    with _lock:
        if "pandas" in sys.modules:
            return  # already paid for: nothing to save
        hide = _HidePandas()
        sys.meta_path.insert(0, hide)
        try:
            import pyarrow

            pyarrow.scalar(0)  # the check pyarrow makes before building any scalar or array
        finally:
            sys.meta_path.remove(hide)
