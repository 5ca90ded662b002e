"""Partition folders: replaced in one step, in-progress folders never listed."""

from __future__ import annotations

import threading

from resources.storage.data_root import TesseraStorage, atomic_directory


def test_replacing_a_partition_never_leaves_it_missing(tmp_path):
    """A reader polling the partition while it is replaced 200 times never finds it missing or
    half-written, and nothing but the partition is left beside it."""
    final = tmp_path / "embeddings" / "2022" / "demo"
    with atomic_directory(final) as tmp:
        (tmp / "index.json").write_text("0")
    stop, missing = threading.Event(), []

    def reader() -> None:
        while not stop.is_set():
            if not (final / "index.json").exists():
                missing.append(True)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 201):
            with atomic_directory(final) as tmp:
                (tmp / "index.json").write_text(str(i))
    finally:
        stop.set()
        thread.join()
    assert missing == []
    assert (final / "index.json").read_text() == "200"
    assert [p.name for p in final.parent.iterdir()] == ["demo"]


def test_in_progress_and_failed_partitions_are_never_listed(tmp_path):
    storage = TesseraStorage(root=str(tmp_path))
    with storage.publish("embeddings", 2022, "demo") as tmp:
        (tmp / "encoder.json").write_text("{}")
        assert storage.partitions("embeddings") == [], "a partition being written is hidden"
    assert storage.partitions("embeddings") == [(2022, "demo")]
    try:
        with storage.publish("embeddings", 2022, "other"):
            raise RuntimeError("the run died")
    except RuntimeError:
        pass
    assert storage.partitions("embeddings") == [(2022, "demo")]
    assert sorted(p.name for p in storage.path("embeddings", "2022").iterdir()) == ["demo"]
