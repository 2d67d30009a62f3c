"""Read-only access to an upstream checkout: its files (a work tree, or a bare repository's commit) and,
where it is a git repository, its history."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

from speedrunner.core.errors import UserError


def _git(git_dir: Path, *args: str, binary: bool = False) -> bytes | str | None:
    """Run a read-only git command; None when it fails (no repository, missing object, no git)."""
    try:
        p = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, timeout=120,
                           env={**os.environ, "GIT_PAGER": "cat", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    return p.stdout if binary else p.stdout.decode("utf-8", "replace")


def find_git_dir(path: Path) -> Path | None:
    """The git directory of a work tree or a bare repository at ``path``, or None."""
    if (path / ".git").exists():
        out = _git(path / ".git", "rev-parse", "--absolute-git-dir")
        return Path(str(out).strip()) if out else None
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path
    return None


class History:
    """The git history of the checkout (read-only)."""

    def __init__(self, git_dir: Path):
        self.git_dir = git_dir
        head = _git(git_dir, "rev-parse", "--verify", "-q", "HEAD^{commit}")
        self.head = str(head).strip() if head else None

    def show(self, commit: str, path: str) -> str | None:
        out = _git(self.git_dir, "cat-file", "blob", f"{commit}:{path}", binary=True)
        return out.decode("utf-8", "replace") if isinstance(out, bytes) else None

    def commit_adding(self, path: str) -> tuple[str, str] | None:
        """(sha, ISO date) of the oldest commit that touched ``path``, following renames."""
        if self.head is None:
            return None
        out = _git(self.git_dir, "log", "--follow", "--format=%H %cI", self.head, "--", path)
        lines = [ln for ln in str(out or "").splitlines() if ln.strip()]
        if not lines:
            return None
        sha, _, date = lines[-1].partition(" ")
        return sha, date

    def commit_on_or_before(self, date: str) -> tuple[str, str] | None:
        """(sha, ISO date) of the main line's last commit on or before ``date`` (YYYY-MM-DD) anywhere on
        Earth (the day ends at 23:59:59 UTC-12)."""
        if self.head is None:
            return None
        out = _git(self.git_dir, "log", "-1", "--first-parent", "--format=%H %cI",
                   f"--before={date} 23:59:59 -1200", self.head)
        line = str(out or "").strip()
        if not line:
            return None
        sha, _, d = line.partition(" ")
        return sha, d

    def root_files(self, commit: str) -> set[str]:
        out = _git(self.git_dir, "ls-tree", "--name-only", commit)
        return set(str(out or "").split())


class Files:
    """The checkout's files, by repository-relative POSIX path."""

    def __init__(self, root: Path):
        root = root.expanduser().resolve()
        if not root.exists():
            raise UserError(f"{root}: no such folder; give the path of a modded-nanogpt checkout")
        self.root = root
        self.git_dir = find_git_dir(root)
        self.bare = not (root / "README.md").is_file() and self.git_dir == root
        self.history = History(self.git_dir) if self.git_dir else None
        self.commit = self.history.head if self.history else None
        self._blobs: dict[str, str] = {}
        self._dirs: set[str] = {""}
        self._batch: subprocess.Popen | None = None
        if self.bare:
            if self.commit is None:
                raise UserError(f"{root}: a bare repository without a HEAD commit")
            out = _git(self.git_dir, "ls-tree", "-r", "-z", "--full-tree", self.commit, binary=True)  # type: ignore[arg-type]
            for entry in bytes(out or b"").split(b"\0"):
                if not entry:
                    continue
                meta, _, name = entry.partition(b"\t")
                parts = meta.split()
                if len(parts) == 3 and parts[1] == b"blob":
                    path = name.decode("utf-8", "replace")
                    self._blobs[path] = parts[2].decode()
                    for parent in PurePosixPath(path).parents:
                        self._dirs.add(str(parent) if str(parent) != "." else "")
        elif not (root / "README.md").is_file():
            raise UserError(f"{root}: no README.md; give the root of a modded-nanogpt checkout")

    @property
    def where(self) -> str:
        return f"{self.root} (commit {self.commit[:12]})" if self.commit else str(self.root)

    def _cat(self, sha: str) -> bytes | None:
        """One blob through a long-lived ``git cat-file --batch``; None for a missing object."""
        try:
            if self._batch is None:
                self._batch = subprocess.Popen(["git", f"--git-dir={self.git_dir}", "cat-file", "--batch"],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.DEVNULL)
            assert self._batch.stdin is not None and self._batch.stdout is not None
            self._batch.stdin.write(sha.encode() + b"\n")
            self._batch.stdin.flush()
            header = self._batch.stdout.readline().split()
            if len(header) != 3:
                return None  # "<sha> missing": a blob the copy does not hold
            data = self._batch.stdout.read(int(header[2]))
            self._batch.stdout.read(1)
            return data
        except (OSError, ValueError, AssertionError):
            self.close()
            return None

    def close(self) -> None:
        if self._batch is not None:
            for stream in (self._batch.stdin, self._batch.stdout):
                if stream is not None:
                    stream.close()
            self._batch.wait(timeout=30)
            self._batch = None

    def is_file(self, rel: str) -> bool:
        if self.bare:
            return rel in self._blobs
        return (self.root / rel).is_file()

    def is_dir(self, rel: str) -> bool:
        rel = rel.rstrip("/")
        if self.bare:
            return rel in self._dirs
        return (self.root / rel).is_dir()

    def read_text(self, rel: str) -> str | None:
        if self.bare:
            sha = self._blobs.get(rel)
            out = self._cat(sha) if sha else None
            return out.decode("utf-8", "replace") if out is not None else None
        try:
            return (self.root / rel).read_bytes().decode("utf-8", "replace")
        except OSError:
            return None

    def files_under(self, rel: str) -> list[str]:
        """Every file below folder ``rel`` (recursive), sorted."""
        rel = rel.strip("/")
        if self.bare:
            prefix = rel + "/" if rel else ""
            return sorted(p for p in self._blobs if p.startswith(prefix))
        base = self.root / rel
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for f in filenames:
                out.append((Path(dirpath) / f).relative_to(self.root).as_posix())
        return sorted(out)

    def dirs_under(self, rel: str) -> list[str]:
        rel = rel.strip("/")
        if self.bare:
            prefix = rel + "/"
            return sorted(d for d in self._dirs if d.startswith(prefix))
        out = []
        for dirpath, dirnames, _ in os.walk(self.root / rel):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for d in dirnames:
                out.append((Path(dirpath) / d).relative_to(self.root).as_posix())
        return sorted(out)

    def list_dir(self, rel: str) -> list[str]:
        """Names directly inside folder ``rel``."""
        rel = rel.strip("/")
        if self.bare:
            prefix = rel + "/" if rel else ""
            names = {p[len(prefix):].split("/")[0] for p in list(self._blobs) + list(self._dirs)
                     if p.startswith(prefix) and p != rel}
            return sorted(n for n in names if n)
        try:
            return sorted(os.listdir(self.root / rel))
        except OSError:
            return []
