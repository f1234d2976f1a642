"""Users: there is no user table or endpoint; a user is its username, and its id is derived.

`user_id_for` is the one place ids come from, so a token's user (always `local`) and a project's
owner (`owner_username`) compare equal exactly when the usernames do.
"""

from __future__ import annotations

import uuid
from functools import lru_cache

LOCAL_USERNAME = "local"

# Fixed namespace for Kroma user ids (uuid5 of the username): stable across processes and rebuilds.
USER_NAMESPACE = uuid.UUID("6f1d3c52-6a4e-5b8e-9c1f-0b7a4d2e9c31")


@lru_cache(maxsize=1024)  # asked on every project-scoped request (auth compares owners)
def user_id_for(username: str) -> str:
    """The deterministic id of a user (uuid5 of the normalised username)."""
    return str(uuid.uuid5(USER_NAMESPACE, username))


LOCAL_USER_ID = user_id_for(LOCAL_USERNAME)
