"""Unit tests of kroma.events.codec: canonical bytes and the SHA-256 hash chain."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from kroma.events import codec
from kroma.events.envelope import Metadata

HEADER = (1, "evt-1", "stream-1", 1, "Thing.Happened", 1, "2026-01-01T00:00:00.000000Z")


def make_rows(n: int, prev: bytes = codec.GENESIS, start: int = 1) -> list[tuple]:
    """n stored rows (position, event_id, stream_id, version, type, schema, data, meta, at, hash)."""
    rows = []
    for pos in range(start, start + n):
        fields = (pos, f"evt-{pos}", "s", pos, "T", 1)
        at = f"2026-01-01T00:00:{pos % 60:02d}.000000Z"
        data, meta = codec.encode({"pos": pos}), codec.encode(Metadata())
        prev = codec.link(prev, codec.header_bytes(*fields, at), data, meta)
        rows.append((*fields, data, meta, at, prev))
    return rows


def test_encode_sorts_keys_so_equal_values_give_equal_bytes() -> None:
    assert codec.encode({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'
    assert codec.encode({"a": 1, "b": 2}) == codec.encode({"b": 2, "a": 1})


def test_encode_of_a_struct_omits_unset_defaults() -> None:
    assert codec.encode(Metadata()) == b"{}"
    encoded = codec.encode(Metadata(request_id="r", actor_user_id="u"))
    assert encoded == b'{"actor_user_id":"u","request_id":"r"}'


def test_header_bytes_is_a_json_array_of_the_header_fields_in_order() -> None:
    assert msgspec.json.decode(codec.header_bytes(*HEADER)) == list(HEADER)


def test_link_is_sha256_of_previous_hash_header_data_and_metadata_separated_by_newlines() -> None:
    header = codec.header_bytes(*HEADER)
    expected = hashlib.sha256(codec.GENESIS + header + b"\n" + b'{"x":1}' + b"\n" + b"{}").digest()
    assert codec.link(codec.GENESIS, header, b'{"x":1}', b"{}") == expected
    assert len(expected) == 32
    assert bytes(32) == codec.GENESIS


@pytest.mark.parametrize("changed", ["prev", "header", "data", "metadata", "boundary"])
def test_link_changes_when_any_input_changes(changed: str) -> None:
    args = {"prev": codec.GENESIS, "header": b"[1]", "data": b'{"x":1}', "metadata": b"{}"}
    base = codec.link(*args.values())
    if changed == "boundary":  # moving bytes between data and metadata is not the same event
        args["data"], args["metadata"] = b'{"x":1}{', b"}"
    else:
        args[changed] = {"prev": b"\x01" * 32, "header": b"[2]", "data": b'{"x":2}', "metadata": b'{"a":1}'}[
            changed
        ]
    assert codec.link(*args.values()) != base


def test_verify_rows_accepts_an_intact_chain_and_returns_its_head() -> None:
    rows = make_rows(5)
    assert codec.verify_rows(rows) == (5, rows[-1][9])


def test_verify_rows_of_no_rows_returns_the_head_it_was_given() -> None:
    assert codec.verify_rows([]) == (0, codec.GENESIS)
    assert codec.verify_rows([], b"\x07" * 32, 9) == (9, b"\x07" * 32)


def test_verify_rows_continues_from_a_given_head_page_by_page() -> None:
    rows = make_rows(6)
    head = codec.verify_rows(rows[:3])
    assert codec.verify_rows(rows[3:], head[1], head[0]) == (6, rows[-1][9])


def test_verify_rows_rejects_a_page_that_does_not_continue_the_given_head() -> None:
    rows = make_rows(6)
    with pytest.raises(codec.ChainBreak) as info:
        codec.verify_rows(rows[3:])  # from GENESIS at 0, but the page starts at 4
    assert (info.value.position, info.value.reason) == (4, "gap after position 0")
    with pytest.raises(codec.ChainBreak) as info:
        codec.verify_rows(rows[3:], b"\x00" * 31 + b"\x01", 3)  # right position, wrong hash
    assert (info.value.position, info.value.reason) == (4, "hash mismatch")


def test_verify_rows_reports_a_gap_at_the_first_position_after_it() -> None:
    rows = make_rows(5)
    del rows[2]
    with pytest.raises(codec.ChainBreak) as info:
        codec.verify_rows(rows)
    assert (info.value.position, info.value.reason) == (4, "gap after position 2")
    assert str(info.value) == "hash chain broken at position 4: gap after position 2"


def test_verify_rows_reports_an_edited_row_as_a_hash_mismatch_at_that_row() -> None:
    rows = make_rows(5)
    rows[1] = (*rows[1][:6], b'{"pos":99}', *rows[1][7:])
    with pytest.raises(codec.ChainBreak) as info:
        codec.verify_rows(rows)
    assert (info.value.position, info.value.reason) == (2, "hash mismatch")


def test_verify_rows_detects_two_rows_swapped_with_their_positions_renumbered() -> None:
    rows = make_rows(5)
    rows[1], rows[2] = (2, *rows[2][1:]), (3, *rows[1][1:])
    with pytest.raises(codec.ChainBreak) as info:
        codec.verify_rows(rows)
    assert info.value.position == 2
