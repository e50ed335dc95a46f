"""Small file helpers. Every write is atomic (temp file or folder + rename) so a killed stage never
leaves a half-written output that DVC or the next stage would trust, and a failed write removes
only its own temp, never anything that was there before."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from sqltune.errors import SqltuneError

# While a folder is filled the caller may also read (model weights, say), so only errors that can
# come from writing alone are reported as the output location's fault; any other OSError is a bug.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _write_error(path: Path, exc: OSError) -> SqltuneError:
    reason = exc.strerror or str(exc)
    return SqltuneError(f"cannot write {path}: {reason}; choose a writable location (an existing folder "
                        "you may write to, on a disk with free space)")


def _default_mode(base: int) -> int:
    # mkstemp and mkdtemp create owner-only entries; the finished output gets the mode a plain
    # open()/mkdir() would have given it. os.umask can only be read by setting it.
    mask = os.umask(0o022)
    os.umask(mask)
    return base & ~mask


def _make_parents(folder: Path, created: list[Path]) -> None:
    """Create ``folder`` and its missing ancestors, appending each one made to ``created`` as soon
    as it exists, so a failure part way still knows what to remove."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    for p in reversed(missing):
        p.mkdir()
        created.append(p)


def _remove_created(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            p.rmdir()  # only if still empty: something written there meanwhile stays
        except OSError:
            break


def _has_no_name(path: str | os.PathLike) -> bool:
    # Path() drops a trailing "/" or "/." ("out/." == "out"), so check what was written.
    return os.path.basename(os.fspath(path)) in ("", ".", "..")


def _refuse_file_target(raw: str | os.PathLike, path: Path) -> None:
    if _has_no_name(raw) or path.is_dir():
        what = "is a directory" if path.is_dir() else "names a directory"  # a trailing '/', '.' or '..'
        raise SqltuneError(f"{raw} {what}; give a file path (e.g. {path / 'out.json'})")


def check_file_target(path: str | Path) -> None:
    """Fail now, before long work, if ``path`` could not be written as a file later: a directory,
    or a location where no temp file can be made. Writes nothing that stays."""
    _refuse_file_target(path, Path(path))
    parent = Path(path).parent
    for p in (parent, *parent.parents):  # the nearest existing ancestor must be a writable folder
        if p.exists():
            if not p.is_dir():
                raise _write_error(Path(path), NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
            if p == parent:
                try:
                    fd, name = tempfile.mkstemp(dir=parent, prefix="." + Path(path).name + ".")
                except OSError as exc:
                    raise _write_error(Path(path), exc) from None
                os.close(fd)
                os.unlink(name)
            elif not os.access(p, os.W_OK | os.X_OK):
                raise _write_error(Path(path), PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
            return


def _temp_beside(path: Path, created: list[Path], folder: bool) -> Path:
    """A new temp file or folder beside ``path`` (its missing parents made and listed in
    ``created``), with the mode a plain open()/mkdir() would give; a failure names ``path``."""
    try:
        _make_parents(path.parent, created)
        prefix = "." + path.name + "."
        if folder:
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix))
        else:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix)
            os.close(fd)
            tmp = Path(name)
        os.chmod(tmp, _default_mode(0o777 if folder else 0o666))
        return tmp
    except OSError as exc:
        raise _write_error(path, exc) from None


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp file beside ``path``; on success it replaces ``path``. On failure only the temp
    file (and folders this call created) is removed, and a previous ``path`` is left as it was."""
    raw, path = path, Path(path)
    _refuse_file_target(raw, path)
    created: list[Path] = []
    tmp: Path | None = None
    try:
        tmp = _temp_beside(path, created, folder=False)
        try:
            yield tmp  # the caller only writes this one file: an OSError here is the location's fault
        except OSError as exc:
            if exc.errno is None:
                raise
            raise _write_error(path, exc) from None
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _write_error(path, exc) from None
        tmp = None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _remove_created(created)
        raise


def _refuse_dir_target(raw: str | os.PathLike, path: Path) -> None:
    if _has_no_name(raw):
        raise SqltuneError(f"{raw} has no folder name of its own; give the output folder's path "
                           f"(e.g. {Path(raw) / 'out'})")
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor) or resolved == cwd or resolved in cwd.parents:
        raise SqltuneError(f"{raw} is the filesystem root, the current folder or one of its parents, which an "
                           "output folder replaces whole; give a dedicated output folder (e.g. models/out)")
    if path.exists() and not path.is_dir():
        raise SqltuneError(f"{raw} is a file, not a folder; remove it or give another output folder")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it takes the place of ``path`` (an
    existing folder there is replaced, as a re-run stage output is). Nothing but the temp folder and
    that old folder itself is ever removed; on failure the old folder is left as it was."""
    raw, path = path, Path(path)
    _refuse_dir_target(raw, path)
    created: list[Path] = []
    tmp: Path | None = None
    try:
        tmp = _temp_beside(path, created, folder=True)
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in _DISK_ERRNOS:
                raise _write_error(path, exc) from None
            raise
        _swap_in(tmp, path)
        tmp = None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the folder ``tmp`` at ``path``. An old folder (or symlink) there is first renamed aside,
    so a failed swap can put it back, then deleted: a symlink itself, never what it points to."""
    old = tmp.with_name(tmp.name + ".old")
    moved = False
    try:
        if path.is_symlink() or path.is_dir():
            os.rename(path, old)
            moved = True
        os.rename(tmp, path)
    except OSError as exc:
        if moved:
            os.rename(old, path)
        raise _write_error(path, exc) from None
    if moved:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _json_line(row: dict) -> str:
    try:
        line = json.dumps(row, ensure_ascii=False)
        line.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (e.g. from "\ud800" in the source JSON) has no UTF-8 form; the escaped
        # form is plain ASCII and reads back to the same string.
        line = json.dumps(row)
    return line + "\n"


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with atomic_file(path) as tmp:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(_json_line(row))


def read_jsonl(path: str | Path, *, skip_blank: bool = True) -> list[dict]:
    """Read JSON Lines, naming the file and line of the first bad line. Lines end at "\\n" only
    (a "\\r" before it is dropped): JSON text may hold U+2028, U+0085 and the like unescaped, which
    str.splitlines() would take for line ends. With ``skip_blank=False`` a blank line is an error
    (for files matched line for line with another), except blank lines that end the file."""
    path = Path(path)
    if not path.is_file():
        raise SqltuneError(f"{path}: file not found; check the path")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SqltuneError(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            if skip_blank:
                continue
            raise SqltuneError(f"{path}, line {lineno} is blank; every line must hold one JSON object "
                               "(one prediction per data row)")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SqltuneError(f"{path}, line {lineno}: invalid JSON ({exc.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise SqltuneError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def require_inside(value: str | None, folder: str | Path, key: str) -> None:
    """Refuse a local input of a stage that lies outside ``folder``, the folder dvc.yaml declares as
    that stage's dependency: DVC hashes only declared inputs, so a file elsewhere could change and
    the stage would not rerun. Paths are compared resolved, so any spelling of a path inside the
    folder is accepted and a symlink out of it is not."""
    if value is None:
        return
    path, root = Path(value).resolve(), Path(folder).resolve()
    if path != root and root not in path.parents:
        raise SqltuneError(
            f"{key} {value} is outside {folder}, the folder DVC tracks for this stage, so DVC would not "
            f"see it change; move it into {folder}/ and set {key}: {Path(folder) / Path(value).name}"
        )
