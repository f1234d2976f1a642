"""Ids from kroma.clock: canonical RFC 9562 strings, never repeated, not shared with a forked child."""

from __future__ import annotations

import os
import uuid

from kroma.clock import Clock, uuid4, uuid7


def test_ids_are_canonical_uuids_of_their_version() -> None:
    for _ in range(5000):  # more than one chunk of random bytes
        for make, version in ((uuid4, 4), (uuid7, 7)):
            text = make()
            parsed = uuid.UUID(text)
            assert str(parsed) == text and parsed.version == version and parsed.variant == uuid.RFC_4122
    assert uuid.UUID(Clock().new_id()).version == 4


def test_ids_do_not_repeat() -> None:
    assert len({uuid4() for _ in range(50_000)}) == 50_000


def test_a_forked_child_does_not_reuse_the_parents_random_bytes() -> None:
    uuid4()  # the parent holds a partly used chunk
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, uuid4().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    os.close(write)
    assert child != uuid4()
