"""Products on an object store (`s3://bucket/prefix`; `gs://` and `az://` alike): the same partition
folders as on a local disk, replaced atomically without renames, which object stores do not have.

A partition is written to a local folder first (GDAL writes GeoTIFFs with random access), uploaded
under a fresh version prefix (`raw/s2/2022/demo/v20261126T074900-1a2b3c4d/...`), and published by one
small pointer write (`_published/raw/s2/2022/demo.json`). Readers only ever follow pointers, so they
see the old partition or the new one, never a half-uploaded one; what a killed writer uploaded is
never pointed at and is removed by the next publish of that partition. The pointers live in their own
tree so listing a product's partitions reads pointers only, never the thousands of files under them.

Concurrent writers of one partition: the pointer is replaced with a conditional write (its ETag), and
a version never replaces a newer one (versions sort by the time their writer started), so the last
run to start wins whatever order they finish in. The version a pointer replaced is kept one publish
longer, for readers that resolved it just before.

Object I/O goes through obstore (the Rust `object_store` crate that LanceDB uses too, so the table and
the products share one set of settings); rasters are read in place by GDAL (`/vsis3/`), which fetches
only the byte ranges a window needs. `bench/object_store.py` measured the alternatives."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import obstore
import rasterio
from obstore.exceptions import AlreadyExistsError, PreconditionError

from resources.storage.atomic import atomic_file
from resources.errors import ConfigurationError
from resources.storage.gdal_env import endpoint_options, read_environment

POINTERS = "_published"
SCHEMES = ("s3://", "gs://", "az://", "abfs://")
# obstore client settings (not store settings) among the keys LanceDB's storage_options accept
CLIENT_KEYS = {"allow_http", "aws_allow_http", "timeout", "connect_timeout", "allow_invalid_certificates"}
UPLOAD_THREADS = 8


def is_object_uri(root: str) -> bool:
    return root.startswith(SCHEMES)


def new_version() -> str:
    """Sortable by start time (UTC, microseconds), unique by its random tail."""
    return datetime.now(timezone.utc).strftime("v%Y%m%dT%H%M%S%f") + f"-{uuid.uuid4().hex[:8]}"


@dataclass
class ObjectRoot:
    """A prefix on an object store, with LanceDB's `storage_options` vocabulary (`aws_endpoint`,
    `aws_region`, `allow_http`, ...). Keys come from the environment (AWS_ACCESS_KEY_ID, an
    instance role, ...) as obstore, LanceDB and GDAL all read it; options may name them too."""

    url: str
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_object_uri(self.url):
            raise ConfigurationError(f"{self.url!r} is not an object-store URI ({', '.join(SCHEMES)})")
        self.url = self.url.rstrip("/")
        client = {k.removeprefix("aws_"): v for k, v in self.options.items() if k in CLIENT_KEYS}
        config = {k: v for k, v in self.options.items() if k not in CLIENT_KEYS}
        try:
            self.store = obstore.store.from_url(self.url, config=config or None, client_options=client or None)
        except Exception as exc:  # obstore raises its own generic errors for bad settings
            raise ConfigurationError(f"cannot use object store {self.url}: {exc}".splitlines()[0]) from exc

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    # -- objects -----------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        try:
            return bytes(obstore.get(self.store, key).bytes())
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self.store, key)
        except FileNotFoundError:
            return False
        return True

    def put(self, key: str, data: bytes | Path, create_only: bool = False) -> bool:
        """Write one object; with `create_only`, False (and nothing written) where it exists."""
        try:
            obstore.put(self.store, key, data, mode="create" if create_only else "overwrite")
        except AlreadyExistsError:
            return False
        return True

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """An object and its ETag (None, None when missing): the base of a conditional replace."""
        try:
            found = obstore.get(self.store, key)
        except FileNotFoundError:
            return None, None
        return bytes(found.bytes()), found.meta["e_tag"]

    def replace_if(self, key: str, data: bytes, etag: str | None) -> bool:
        """Write `key` only if it is still the version read (`etag`; None: only if still missing);
        False when another writer came first (read again and retry)."""
        try:
            obstore.put(self.store, key, data, mode={"e_tag": etag} if etag else "create")
        except (PreconditionError, AlreadyExistsError):
            return False
        return True

    def download(self, key: str, target: Path) -> Path:
        """An object into a local file, written under a temporary name and moved into place."""
        with atomic_file(target) as tmp, open(tmp, "wb") as out:
            for chunk in obstore.get(self.store, key):
                out.write(chunk)
        return target

    def keys(self, prefix: str) -> list[str]:
        return [meta["path"] for batch in obstore.list(self.store, prefix.rstrip("/") + "/") for meta in batch]

    def children(self, prefix: str) -> list[str]:
        """Names of the 'folders' directly under a prefix."""
        listed = obstore.list_with_delimiter(self.store, prefix.rstrip("/") + "/")
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listed["common_prefixes"])

    def delete_prefix(self, prefix: str) -> int:
        keys = self.keys(prefix)
        for start in range(0, len(keys), 1000):
            obstore.delete(self.store, keys[start:start + 1000])
        return len(keys)

    def upload(self, folder: Path, prefix: str) -> int:
        """Every file under a local folder, in parallel (each a multipart upload when large)."""
        files = [p for p in folder.rglob("*") if p.is_file()]
        with ThreadPoolExecutor(min(UPLOAD_THREADS, max(len(files), 1))) as pool:
            list(pool.map(lambda p: obstore.put(self.store, f"{prefix}/{p.relative_to(folder).as_posix()}", p), files))
        return len(files)

    def download_prefix(self, prefix: str, target: Path) -> list[Path]:
        """Every object under a prefix into a local folder, in parallel."""
        keys = self.keys(prefix)
        with ThreadPoolExecutor(min(UPLOAD_THREADS, max(len(keys), 1))) as pool:
            return list(pool.map(lambda k: self.download(k, target / k[len(prefix.rstrip("/")) + 1:]), keys))

    def fetch_all(self, name: str, target: Path) -> list[Path]:
        """One object, or every object under a 'folder', as local files under `target`."""
        if self.exists(name):
            return [self.download(name, target / name.rsplit("/", 1)[-1])]
        return self.download_prefix(name, target / name)

    # -- published partitions ----------------------------------------------------------------------
    def _pointer(self, key: str) -> str:
        return f"{POINTERS}/{key}.json"

    def published(self, key: str) -> str | None:
        """The version prefix a partition's pointer names, or None when it was never published."""
        data = self.get(self._pointer(key))
        return f"{key}/{json.loads(data)['version']}" if data else None

    def publish(self, folder: Path, key: str, version: str) -> bool:
        """Upload `folder` as `key/version` and point `key` at it, unless a newer version is already
        published (then the upload is removed and False returned)."""
        self.upload(folder, f"{key}/{version}")
        pointer = self._pointer(key)
        body = json.dumps({"version": version, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "host": os.uname().nodename, "pid": os.getpid()}).encode()
        while True:  # until our pointer write lands on the pointer we read (else another writer came between)
            current, etag = self.read_versioned(pointer)
            previous = json.loads(current)["version"] if current else None
            if previous is not None and previous > version:
                self.delete_prefix(f"{key}/{version}")
                return False
            if self.replace_if(pointer, body, etag):
                break
        for old in self.children(key):  # older publishes, killed writers, and runs that started earlier and lose
            if old.startswith("v") and old < version and old != previous:
                self.delete_prefix(f"{key}/{old}")
        return True

    def unpublish(self, key: str) -> int:
        """Remove a partition: its pointer first (readers stop finding it), then every version."""
        obstore.delete(self.store, self._pointer(key))
        return self.delete_prefix(key)

    def published_keys(self, prefix: str) -> list[str]:
        """Keys of every published partition under a prefix (`raw/s2` -> `raw/s2/2022/demo`, ...)."""
        tree = f"{POINTERS}/{prefix}"
        return sorted(k[len(POINTERS) + 1:-len(".json")] for k in self.keys(tree) if k.endswith(".json"))

    # -- GDAL --------------------------------------------------------------------------------------
    def gdal_options(self) -> dict[str, str]:
        """What GDAL needs to read this store's rasters in place: the endpoint (as obstore and
        LanceDB take it from the options or AWS_ENDPOINT_URL / AWS_ENDPOINT), and keys named in the
        options; keys in the environment GDAL reads itself."""
        options: dict[str, str] = {}
        endpoint = (self.options.get("aws_endpoint") or self.options.get("endpoint")
                    or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT"))
        if endpoint:
            options |= endpoint_options(endpoint)
        for name in ("access_key_id", "secret_access_key", "session_token", "region"):
            value = self.options.get(f"aws_{name}") or self.options.get(name)
            if value:
                options[f"AWS_{name.upper()}"] = value
        return options

    @contextlib.contextmanager
    def open_raster(self, key: str) -> Iterator[Any]:
        with read_environment(self.gdal_options()), rasterio.open(self.uri(key)) as src:
            yield src
