"""Who a job runs as: never root.

An agent started as root runs every sandboxed job as an unprivileged user (``--run-as``, default
``nobody``): files on the node that only root may read stay unreadable through the sandbox's
read-only view of the node, and what a job writes belongs to that user. An agent that is not root
runs jobs as itself, which is already unprivileged.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd

DEFAULT_RUN_AS = "nobody"
_FALLBACK = (65534, 65534)  # nobody:nogroup on Debian and most distributions


class BadRunAs(ValueError):
    """A ``--run-as`` value that names no user, or root."""


@functools.cache
def parse_run_as(value: str) -> tuple[int, int]:
    """``USER[:GROUP]`` or ``UID[:GID]`` as (uid, gid); the group defaults to the user's own."""
    user, _, group = value.partition(":")
    if not user:
        raise BadRunAs("--run-as needs a user name or uid")
    gid: int | None = None
    if user.isdigit():
        uid = int(user)
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    else:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            if user == DEFAULT_RUN_AS:
                return _FALLBACK
            raise BadRunAs(f"--run-as: no user {user!r} on this node") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise BadRunAs(f"--run-as: no group {group!r} on this node") from None
    if uid == 0 or gid == 0:
        raise BadRunAs("--run-as: jobs never run as root (uid or gid 0)")
    return uid, gid


def job_user(run_as: str | None) -> tuple[int, int] | None:
    """The (uid, gid) jobs run as, or None where the agent is not root (jobs run as the agent)."""
    if os.geteuid() != 0:
        return None
    return parse_run_as(run_as or DEFAULT_RUN_AS)
