"""Storage: the interface every node's state goes through, and its two implementations.

    interface.py  `Storage` (get, scan, atomic batch write, sync), the column
                  families, `StorageError`
    memory.py     `MemoryStorage`: dicts that lose unsynced writes on `crash()`
    rocks.py      `RocksStorage`: one RocksDB database (imported on its own,
                  so the sans-IO core never imports rocksdict)

This package exports the interface and the in-memory implementation.
"""

from kvsvr.storage.interface import COLUMN_FAMILIES, Family, Storage, StorageError, Write
from kvsvr.storage.memory import MemoryStorage

__all__ = ["COLUMN_FAMILIES", "Family", "MemoryStorage", "Storage", "StorageError", "Write"]
