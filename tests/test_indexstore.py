"""The index container: payloads written in parts, large ones loaded mapped.

The payloads here are arbitrary bytes (the container does not look inside
them); what the codecs put in them is covered by tests/test_codecs.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from imagefs.services.indexstore import MAP_PAYLOAD, IndexStore, PersistedIndex

KEY = "ab" * 32


def _payload(n: int) -> bytes:
    return os.urandom(n)


def _mapped_paths() -> str:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        return f.read()


@pytest.mark.parametrize("size", [100, MAP_PAYLOAD + 12345])
def test_parts_are_saved_as_their_join_and_load_back(tmp_path: Path, size: int) -> None:
    store = IndexStore(str(tmp_path))
    data = _payload(size)
    parts = [data[:7], memoryview(data)[7:size // 2], data[size // 2:], b""]
    path = store.save("codec-x", KEY, parts)
    assert path is not None
    loaded = store.load("codec-x", KEY)
    assert loaded is not None and bytes(loaded) == data
    # The same file as one buffer written whole.
    other = IndexStore(str(tmp_path / "whole"))
    whole = other.save("codec-x", KEY, data)
    assert whole is not None and Path(whole).read_bytes() == Path(path).read_bytes()


def test_a_large_payload_is_a_view_of_the_mapped_file(tmp_path: Path) -> None:
    store = IndexStore(str(tmp_path))
    data = _payload(MAP_PAYLOAD)
    path = store.save("codec-x", KEY, data)
    loaded = store.load("codec-x", KEY)
    assert isinstance(loaded, memoryview) and loaded == data
    assert path in _mapped_paths()
    loaded.release()
    del loaded
    assert path not in _mapped_paths()


@pytest.mark.parametrize("size", [100, MAP_PAYLOAD + 1])
@pytest.mark.parametrize("damage", ["flip", "append", "cut"])
def test_damaged_files_are_refused_with_one_warning(tmp_path: Path, size: int, damage: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    store = IndexStore(str(tmp_path))
    path = Path(store.save("codec-x", KEY, _payload(size)) or "")
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) - size // 2] ^= 0x01
    elif damage == "append":
        raw += b"\0"
    else:
        del raw[-1:]
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        assert store.load("codec-x", KEY) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "rebuilding" in warnings[0]
    assert str(path) not in _mapped_paths()


def test_the_mapping_goes_once_the_payload_is_decoded(tmp_path: Path) -> None:
    """PersistedIndex hands a decoder the view and releases it after: the
    file is not kept mapped by a decoder that copied what it needed."""
    source = tmp_path / "backup"
    source.write_bytes(b"x")
    store = IndexStore(str(tmp_path / "idx"))
    index = PersistedIndex(store, "codec-x", [str(source)])
    data = _payload(MAP_PAYLOAD * 2)
    index.save([data[:100], data[100:]])
    seen: list[bool] = []

    def decode(payload: bytes | memoryview, path: str) -> bytes:
        seen.append(isinstance(payload, memoryview) and path in _mapped_paths())
        return bytes(payload[:16])

    assert index.load(decode) == data[:16]
    assert seen == [True]
    assert str(index.path) not in _mapped_paths()
