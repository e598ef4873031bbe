"""Pull progress for the CLI: per-layer bars on a terminal, plain lines otherwise.

The image side reports through an object with five methods, called from download threads:
``message(text)``, ``start(key, label, total)``, ``update(key, nbytes)``,
``finish(key, label, status)`` (status: "done", "exists", "unpacked", "failed") and ``close()``.
Library code never prints (STYLE.md §5); the CLI makes one of these with ``make_progress``.
"""
from __future__ import annotations

import _thread
import time

BAR = 24


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}GB"


class LineProgress:
    """One line per event: for logs and batch jobs (a Slurm output file is not a terminal)."""

    def __init__(self, stream):
        self.stream = stream
        self._lock = _thread.allocate_lock()   # threading.Lock, without importing threading
        self._sizes: dict[str, int] = {}

    def _write(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        self._write(text)

    def start(self, key: str, label: str, total: int) -> None:
        self._sizes[key] = total
        self._write(f"{label}: downloading {human(total)}")

    def update(self, key: str, nbytes: int) -> None:
        pass

    def finish(self, key: str, label: str, status: str) -> None:
        words = {"done": "pulled", "exists": "already exists", "unpacked": "unpacked from a "
                 "stored blob", "failed": "failed"}
        self._write(f"{label}: {words.get(status, status)}")

    def close(self) -> None:
        pass


class TtyProgress(LineProgress):
    """One bar per layer, redrawn in place at most ten times a second (ANSI cursor-up)."""

    def __init__(self, stream, clock=time.monotonic):
        super().__init__(stream)
        self.clock = clock
        self._rows: dict[str, list] = {}      # key → [label, done, total, status]
        self._drawn = 0
        self._last = 0.0

    def message(self, text: str) -> None:
        with self._lock:
            self._erase()
            self.stream.write(text + "\n")
            self._draw()

    def start(self, key, label, total) -> None:
        with self._lock:
            self._rows[key] = [label, 0, total, "downloading"]
            self._redraw(force=True)

    def update(self, key, nbytes) -> None:
        with self._lock:
            row = self._rows.get(key)
            if row:
                row[1] += nbytes
                self._redraw()

    def finish(self, key, label, status) -> None:
        with self._lock:
            row = self._rows.setdefault(key, [label, 0, 0, status])
            row[3] = {"done": "pull complete", "exists": "already exists",
                      "unpacked": "unpacked"}.get(status, status)
            if status == "done":
                row[1] = row[2]
            self._redraw(force=True)

    def close(self) -> None:
        with self._lock:
            self._redraw(force=True)

    def _line(self, row) -> str:
        label, done, total, status = row
        if status != "downloading":
            return f"{label}: {status}"
        filled = int(BAR * done / total) if total else BAR
        return (f"{label}: [{'=' * filled}{' ' * (BAR - filled)}] "
                f"{human(done)}/{human(total)}")

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")   # up N lines, clear to the end
            self._drawn = 0

    def _draw(self) -> None:
        for row in self._rows.values():
            self.stream.write(self._line(row) + "\n")
        self._drawn = len(self._rows)
        self.stream.flush()

    def _redraw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self._erase()
        self._draw()


def make_progress(stream):
    """Bars when ``stream`` is a terminal, plain lines when it is not."""
    isatty = getattr(stream, "isatty", None)
    return TtyProgress(stream) if isatty and isatty() else LineProgress(stream)
