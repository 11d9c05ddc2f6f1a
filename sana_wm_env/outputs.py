"""Output files written safely: paths checked before any work, files staged and renamed together on success.

A run that fails or is interrupted must not leave outputs that look complete, and no output may replace one of
the run's inputs. :func:`check_output` checks a path up front (before a model loads), naming the CLI flag;
:class:`StagedOutputs` writes a run's files under temporary names beside their final ones and renames them all
on success (removing stale files an earlier run left under names this run does not write), or deletes them on
failure, so an earlier run's complete set stays as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

PARTIAL_TAG = ".partial-"  # temporary names: .<stem>.partial-<pid><suffix>, beside the final file


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (also through links, or before either exists)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(path: str | Path, flag: str, *, kind: str = "file", inputs: Iterable[tuple[str, Path | None]] = (),
                 suffixes: tuple[str, ...] | None = None, subject: str | None = None) -> Path:
    """Fail (ValueError naming ``flag`` and the path) unless ``path`` can take an output of ``kind``.

    ``kind`` is ``"file"`` or ``"dir"``. Checks: the path is not one of ``inputs`` (``(flag, path)`` pairs, None
    skipped), a file is not an existing folder (and a folder not an existing file), its suffix is one of
    ``suffixes``, and the nearest existing parent is a folder this process may write in. ``subject`` names a
    path the user did not type (e.g. ``"the TUM sidecar X of --out Y"``); default ``"FLAG PATH"``.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    path = Path(path)
    who = subject or f"{flag} {path}"
    for in_flag, in_path in inputs:
        if in_path is not None and _same_file(path, Path(in_path)):
            raise ValueError(f"{who} would replace the input {in_flag} {in_path}; "
                             f"choose another {flag}")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{who} is a folder; give {flag} a file path (e.g. one inside that folder)")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise ValueError(f"{who} is a file; give {flag} a folder path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{who} is not writable; choose another {flag} or fix its permissions")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{who}: {parent} is a file, not a folder; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{who}: cannot write in {parent} (permission denied); choose a writable {flag}")
    return path


class StagedOutputs:
    """A run's output files, written under temporary names and renamed to their final names together.

    ``stage(final)`` returns the temporary path to write ``final`` to (same folder and suffix, so writers that
    go by the suffix work). :meth:`commit` renames every staged file in staging order (stage the file that marks
    a run as done last) and deletes ``stale`` paths (files of earlier runs this run does not write); :meth:`discard`
    deletes the temporary files. As a context manager it commits on success and discards on any exception,
    Ctrl-C included.
    """

    def __init__(self, stale: Iterable[str | Path] = ()) -> None:
        self.staged: list[tuple[Path, Path]] = []
        self.stale = [Path(p) for p in stale]
        self.committed = False

    def stage(self, final: str | Path) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}{PARTIAL_TAG}{os.getpid()}{final.suffix}")
        tmp.unlink(missing_ok=True)
        self.staged.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        """Rename the staged files to their final names and remove stale ones; returns the final paths."""
        missing = [str(final) for tmp, final in self.staged if not tmp.is_file()]
        if missing:
            self.discard()
            raise RuntimeError(f"outputs {', '.join(missing)} were staged but never written")
        for p in self.stale:
            p.unlink(missing_ok=True)
        for tmp, final in self.staged:
            os.replace(tmp, final)
        self.committed = True
        return [final for _, final in self.staged]

    def discard(self) -> None:
        """Delete the temporary files (the final paths keep what an earlier run left there)."""
        for tmp, _ in self.staged:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.discard()
        elif not self.committed:
            self.commit()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file: readers see the old file or the whole new one."""
    with StagedOutputs() as out:
        out.stage(path).write_text(text)
    return Path(path)


__all__ = ["PARTIAL_TAG", "StagedOutputs", "check_output", "write_text_atomic"]
