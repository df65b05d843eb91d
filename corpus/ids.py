"""Duplicate-id detection in bounded memory: an on-disk index (SQLite, in the standard library).

Only needed when ids come from a column (default ids, ``<input>:<row>``, are unique by
construction). The index is rebuilt by the planning pass of every run from the inputs
themselves, so it never has to agree with a run that was killed: the first good row with an
id keeps it, every later one is a duplicate, whatever the engine and whichever units remain.
Memory stays within SQLite's page cache (:data:`CACHE_KIB`), whatever the corpus size.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

CACHE_KIB = 65536  # SQLite page cache: the index's memory bound
_COMMIT_EVERY = 50_000


class IdIndex:
    """Ids seen so far, and the rows found to repeat one.

    Build it with :meth:`create`; it deletes any file left at ``path`` by an earlier run.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._pending = 0

    @classmethod
    def create(cls, path: Path) -> IdIndex:
        """A new, empty index in the file ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        db = sqlite3.connect(path, check_same_thread=False)
        # Rebuilt from the inputs on every run: durability would only cost time.
        db.executescript(
            f"""
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -{CACHE_KIB};
            CREATE TABLE ids (id TEXT PRIMARY KEY, first TEXT NOT NULL) WITHOUT ROWID;
            CREATE TABLE duplicates (
                input INTEGER, row INTEGER, reason TEXT NOT NULL, PRIMARY KEY (input, row)
            ) WITHOUT ROWID;
            """
        )
        return cls(db, path)

    def add(self, ident: str, input_index: int, row: int, where: str) -> bool:
        """Record that row ``row`` of input ``input_index`` (``where``) holds ``ident``.

        Returns False, and records the row as a duplicate, if an earlier row held it.
        """
        cursor = self._db.execute("INSERT OR IGNORE INTO ids VALUES (?, ?)", (ident, where))
        self._tick()
        if cursor.rowcount:
            return True
        (first,) = self._db.execute("SELECT first FROM ids WHERE id = ?", (ident,)).fetchone()
        self._db.execute(
            "INSERT INTO duplicates VALUES (?, ?, ?)",
            (input_index, row, f"duplicate id {_short(ident)} (first at {first})"),
        )
        return False

    def duplicates(self, input_index: int, first_row: int, last_row: int) -> dict[int, str]:
        """Row -> reason for the duplicates among rows ``first_row..last_row`` of an input."""
        self._db.commit()
        rows = self._db.execute(
            "SELECT row, reason FROM duplicates WHERE input = ? AND row BETWEEN ? AND ?",
            (input_index, first_row, last_row),
        )
        return dict(rows.fetchall())

    def count(self) -> int:
        """Duplicate rows found so far."""
        return int(self._db.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0])

    def close(self, delete: bool = True) -> None:
        """Close the index, deleting its file unless ``delete`` is False."""
        self._db.close()
        if delete:
            self.path.unlink(missing_ok=True)

    def _tick(self) -> None:
        self._pending += 1
        if self._pending >= _COMMIT_EVERY:
            self._db.commit()
            self._pending = 0


def _short(ident: str) -> str:
    return repr(ident if len(ident) <= 80 else ident[:77] + "...")
