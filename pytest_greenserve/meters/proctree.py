"""The process tree this session measures: the current process and its children, recursively.

``psutil.Process.children(recursive=True)`` reads ``/proc/<pid>/stat`` of *every* process on
the machine (about 2 ms with 70 processes here), too slow to call at 10 Hz. On Linux the
kernel lists each thread's direct children in ``/proc/<pid>/task/<tid>/children``; walking
those costs tens of microseconds. Elsewhere (or without that file) we fall back to psutil.
"""

from __future__ import annotations

import os

import psutil


def tree_pids(root_pid: int | None = None) -> list[int]:
    """The root pid followed by its descendants (recursive); root first."""
    root_pid = os.getpid() if root_pid is None else root_pid
    try:
        return [root_pid] + _descendants_proc(root_pid)
    except OSError:
        try:
            return [root_pid] + [p.pid for p in psutil.Process(root_pid).children(recursive=True)]
        except psutil.Error:
            return [root_pid]


def _descendants_proc(root_pid: int) -> list[int]:
    # raises OSError when the root has no children file (non-Linux, old kernel)
    out: list[int] = []
    stack = [root_pid]
    first = True
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
            kids: list[int] = []
            for tid in tids:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                    kids.extend(int(x) for x in fh.read().split())
        except OSError:
            if first:
                raise
            continue  # a child that ended meanwhile
        first = False
        out.extend(kids)
        stack.extend(kids)
    return out


def tree_cpu_time_s(root_pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by the process tree. Units: s.

    Each process counts its own time plus ``children_user``/``children_system`` (time of
    children it has waited for), so a child that ends between two calls keeps counting:
    its time moves from its own entry to its parent's children fields. Orphans re-parented
    away from the tree are lost.
    """
    total = 0.0
    for pid in tree_pids(root_pid):
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total
