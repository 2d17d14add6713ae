"""Append-only JSONL files that survive crashes and concurrent writers.

Every row is written with one `write()` of a whole line, flushed and fsynced while an exclusive `fcntl` lock is held,
so two processes (or two threads) never interleave and an acknowledged row is on disk. The only damage a crash can
leave is a last line that is half written (no newline) or garbage (a machine crash can leave zeros): reading under
the lock moves such a tail into `<file>.damaged` with a warning and cuts it off, so it is neither dropped silently
nor mistaken for a row. A bad line anywhere else was edited by hand: that is an error naming the line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class JsonlError(ValueError):
    """A JSONL log is damaged in a way that cannot be repaired automatically; the message names the line."""


def damaged_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.damaged")


class AppendLog:
    """One append-only JSONL file; `rows` holds every complete row read so far (this process's and others')."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._thread_lock = threading.RLock()  # flock is per open file: threads of one process need their own lock
        self._offset = 0
        self._line = 0
        self.rows: list[dict[str, Any]] = []
        with self.locked():
            pass

    @contextmanager
    def locked(self) -> Iterator[list[dict[str, Any]]]:
        """Hold the file lock; on entry, read the rows other writers appended (setting aside a damaged tail)."""
        with self._thread_lock:
            with open(f"{self.path}.lock", "a") as lock_file:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
                try:
                    new_rows = self._catch_up()
                    yield new_rows
                finally:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _catch_up(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        new_rows, consumed = [], 0
        lines = data.split(b"\n")
        for index, raw in enumerate(lines):
            is_last = index == len(lines) - 1
            if is_last and raw == b"":
                break
            complete = not is_last  # the piece after the final "\n" has no newline yet
            row = _parse(raw) if complete else None
            if row is None and raw.strip() == b"" and complete:
                consumed += len(raw) + 1
                self._line += 1
                continue
            if row is None:
                rest_is_tail = all(not piece.strip() for piece in lines[index + 1:])
                if not rest_is_tail:
                    raise JsonlError(
                        f"{self.path}, line {self._line + 1}: not a JSON object and not the last line. The file was "
                        "edited by hand; fix or delete that line."
                    )
                self._set_aside(self._offset + consumed, data[consumed:])
                break
            consumed += len(raw) + 1
            self._line += 1
            new_rows.append(row)
        self._offset += consumed
        self.rows.extend(new_rows)
        return new_rows

    def _set_aside(self, start: int, tail: bytes) -> None:
        side = damaged_path(self.path)
        with open(side, "ab") as handle:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            handle.write(f"# {stamp} set aside from {self.path.name} at byte {start}\n".encode())
            handle.write(tail.rstrip(b"\n") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with open(self.path, "r+b") as handle:
            handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())
        logger.warning("%s: the last line was damaged (an interrupted write?); %d bytes moved to %s. Rows before it "
                       "are intact.", self.path, len(tail), side)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row; call inside `locked()`. On return the row is on disk."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with open(self.path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._offset += len(line)
        self._line += 1
        self.rows.append(row)

    def refresh(self) -> list[dict[str, Any]]:
        """Read what other writers appended since the last look."""
        with self.locked() as new_rows:
            return new_rows


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) else None
