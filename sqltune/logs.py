"""Per-stage log files: what a stage shows on the console, also in ``logs/<stage>.log``, each line
with its time. Progress bars redraw a line with carriage returns; the log keeps the bar's state at
most every 30 seconds and its last state, not every redraw."""

from __future__ import annotations

import io
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

LOG_DIR = "logs"
_REDRAW_EVERY_S = 30.0


class _Tee(io.TextIOBase):
    """A text stream that writes to the console stream and, line by line, to the log."""

    def __init__(self, console: TextIO, log: TextIO):
        self.console, self.log = console, log
        self._line = ""
        self._last_redraw = 0.0

    def write(self, text: str) -> int:
        self.console.write(text)
        for piece in text.splitlines(keepends=True):
            if piece.endswith("\n"):
                self._emit(self._line + piece[:-1])
                self._line = ""
            else:
                self._line += piece
        if "\r" in self._line:  # a redrawn progress bar: keep its newest state
            parts = [part for part in self._line.split("\r") if part]
            self._line = parts[-1] if parts else ""
            if time.monotonic() - self._last_redraw > _REDRAW_EVERY_S and self._line.strip():
                self._emit(self._line)
                self._last_redraw = time.monotonic()
        return len(text)

    def _emit(self, line: str) -> None:
        parts = [part for part in line.split("\r") if part.strip()]
        line = parts[-1] if parts else ""
        if line.strip():
            self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            self.log.flush()

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    @property
    def encoding(self):
        return getattr(self.console, "encoding", "utf-8")

    def close_line(self) -> None:
        if self._line.strip():
            self._emit(self._line)
        self._line = ""


@contextmanager
def stage_log(stage: str, folder: str | os.PathLike = LOG_DIR) -> Iterator[Path | None]:
    """Copy stdout and stderr to ``folder/<stage>.log`` (a new file each run) while the block runs.
    A folder that can't be written only loses the log, never the run."""
    path = Path(folder) / f"{stage}.log"
    if os.environ.get("RANK", "0") != "0":  # a launched worker: the launching process keeps the log
        yield None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ):
            path.write_text("", encoding="utf-8")  # a new file each run; a launched worker joins its launcher's
        # Append mode for both: the launcher and its rank-0 worker write the same file, and each line
        # lands at its end instead of over the other's.
        log = path.open("a", encoding="utf-8")
    except OSError:
        yield None
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
    try:
        yield path
    finally:
        for tee in (sys.stdout, sys.stderr):
            if isinstance(tee, _Tee):
                tee.close_line()
        sys.stdout, sys.stderr = out, err
        log.close()
