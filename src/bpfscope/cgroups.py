"""cgroup v2 ids and paths.

The id the kernel reports (``bpf_get_current_cgroup_id``, link info) is the
inode number of the cgroup's directory under the cgroup2 mount, so a path
becomes an id with ``stat`` and an id becomes a path by walking the tree.
"""

from __future__ import annotations

import os

__all__ = ["cgroup_id", "paths_by_id"]


def cgroup_id(path: str, root: str | None) -> int:
    """The id of a cgroup given as a directory: absolute, or relative to the
    cgroup2 mount ``root``. Raises FileNotFoundError (or NotADirectoryError)."""
    full = path if os.path.isabs(path) else None
    if full is None or not os.path.isdir(full):
        if root is None:
            raise FileNotFoundError("no cgroup v2 mount")
        full = os.path.join(root, path.lstrip("/"))
    if not os.path.isdir(full):
        raise NotADirectoryError(full)
    return os.stat(full).st_ino


def paths_by_id(root: str) -> dict[int, str]:
    """Every cgroup under ``root``: id -> path relative to it ("/a/b", "/")."""
    out: dict[int, str] = {}
    for dirpath, _dirs, _files in os.walk(root):
        try:
            ino = os.stat(dirpath).st_ino
        except OSError:
            continue
        out[ino] = "/" + os.path.relpath(dirpath, root) if dirpath != root else "/"
    return out
