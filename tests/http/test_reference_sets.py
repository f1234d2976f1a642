"""Reference sets and their items through the HTTP contract (§2 rows 49-58, §3.11, §8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from tests.http.records_support import assert_error, frozen_client, ok, project_events, race

BASE = "/api/projects/demo/reference-sets"
ITEM_FIELDS = "label, content_uri, content_text, sort_order, metadata_json"


def create_set(client: TestClient, name: str = "Faces", **extra: Any) -> dict[str, Any]:
    return ok(client.post(BASE, json={"name": name, **extra}))["reference_set"]


def create_item(client: TestClient, set_id: str, label: str = "front", **extra: Any) -> dict[str, Any]:
    body = {"label": label, "content_uri": "s3://refs/front.png", **extra}
    return ok(client.post(f"{BASE}/{set_id}/items", json=body))["item"]


# -- sets ----------------------------------------------------------------------------------------


def test_set_crud_round_trip(client: TestClient, project: dict) -> None:
    assert ok(client.get(BASE)) == {"ok": True, "count": 0, "reference_sets": []}
    body = ok(client.post(BASE, json={"name": " Faces ", "description": " hero faces "}))
    ref_set = body["reference_set"]
    assert set(ref_set) == {"id", "project_id", "name", "description", "created_at", "updated_at"}
    assert (ref_set["name"], ref_set["description"]) == ("Faces", "hero faces") and "audit_id" in body
    assert ok(client.get(f"{BASE}/{ref_set['id']}")) == {"ok": True, "reference_set": ref_set}
    assert ok(client.get(BASE))["reference_sets"] == [ref_set]

    updated = ok(client.put(f"{BASE}/{ref_set['id']}", json={"description": ""}))
    assert updated["reference_set"]["description"] == "" and "audit_id" in updated

    deleted = ok(client.delete(f"{BASE}/{ref_set['id']}"))
    assert deleted["deleted"] is True and deleted["id"] == ref_set["id"] and "audit_id" in deleted
    assert_error(client.get(f"{BASE}/{ref_set['id']}"), 404, "Reference set not found")


def test_set_validation(client: TestClient, project: dict) -> None:
    assert_error(client.post(BASE, json={}), 400, "Field 'name' is required")
    assert_error(client.post(BASE, json={"name": " "}), 400, "Field 'name' is required")
    ref_set = create_set(client)
    assert_error(client.post(BASE, json={"name": "Faces"}), 400, "Reference set name already exists")
    other = create_set(client, "Hands")
    assert_error(
        client.put(f"{BASE}/{other['id']}", json={"name": "Faces"}), 400, "Reference set name already exists"
    )
    assert_error(
        client.put(f"{BASE}/{ref_set['id']}", json={}), 400, "Provide at least one of: name, description"
    )
    assert_error(client.put(f"{BASE}/{ref_set['id']}", json={"name": ""}), 400, "Field 'name' is required")


def test_set_checks_come_in_contract_order(client: TestClient) -> None:
    missing = "/api/projects/missing/reference-sets"
    assert_error(client.post(missing, json={}), 400, "Field 'name' is required")
    assert_error(client.post(missing, json={"name": "Faces"}), 404, "Project not found")
    assert_error(client.put(f"{missing}/x", json={}), 400, "Provide at least one of: name, description")
    assert_error(client.put(f"{missing}/x", json={"name": "n"}), 404, "Reference set not found")
    assert_error(client.get(f"{missing}/x"), 404, "Reference set not found")
    assert_error(client.delete(f"{missing}/x"), 404, "Reference set not found")
    assert_error(client.get(missing), 404, "Project not found")


def test_racing_set_creates_of_one_name_admit_exactly_one(client: TestClient, project: dict) -> None:
    responses = race(client, ("POST", BASE, {"name": "Faces"}), ("POST", BASE, {"name": "Faces"}))
    assert sorted(r.status_code for r in responses) == [200, 400]
    assert_error(next(r for r in responses if r.status_code == 400), 400, "Reference set name already exists")
    assert ok(client.get(BASE))["count"] == 1


# -- items ---------------------------------------------------------------------------------------


def test_item_crud_round_trip(client: TestClient, project: dict) -> None:
    ref_set = create_set(client)
    items_url = f"{BASE}/{ref_set['id']}/items"
    assert ok(client.get(items_url)) == {
        "ok": True,
        "reference_set_id": ref_set["id"],
        "count": 0,
        "items": [],
    }
    body = ok(client.post(items_url, json={"label": " front ", "content_text": " a face "}))
    item = body["item"]
    assert set(item) == {
        "id",
        "project_id",
        "reference_set_id",
        "label",
        "content_uri",
        "content_text",
        "sort_order",
        "metadata_json",
        "created_at",
        "updated_at",
    }
    assert (item["label"], item["content_uri"], item["content_text"]) == ("front", "", "a face")
    assert (item["sort_order"], item["metadata_json"]) == (0, {}) and "audit_id" in body
    assert item["reference_set_id"] == ref_set["id"] and item["project_id"] == project["id"]
    assert ok(client.get(f"{items_url}/{item['id']}")) == {"ok": True, "item": item}

    changed = ok(
        client.put(
            f"{items_url}/{item['id']}",
            json={"label": "side", "content_uri": "s3://refs/side.png", "sort_order": 3},
        )
    )
    assert (changed["item"]["label"], changed["item"]["content_uri"], changed["item"]["sort_order"]) == (
        "side",
        "s3://refs/side.png",
        3,
    )
    assert changed["item"]["content_text"] == "a face" and "audit_id" in changed
    assert ok(client.get(items_url))["items"] == [changed["item"]]

    deleted = ok(client.delete(f"{items_url}/{item['id']}"))
    assert deleted["deleted"] is True and deleted["id"] == item["id"] and "audit_id" in deleted
    assert_error(client.get(f"{items_url}/{item['id']}"), 404, "Reference set item not found")


def test_item_create_checks_label_then_content_before_any_lookup(client: TestClient) -> None:
    missing = "/api/projects/missing/reference-sets/x/items"
    assert_error(client.post(missing, json={}), 400, "Field 'label' is required")
    assert_error(
        client.post(missing, json={"label": " ", "content_uri": "u"}), 400, "Field 'label' is required"
    )
    content = "Provide at least one of: content_uri, content_text"
    assert_error(client.post(missing, json={"label": "front"}), 400, content)
    assert_error(
        client.post(missing, json={"label": "front", "content_uri": " ", "content_text": ""}), 400, content
    )
    assert_error(
        client.post(missing, json={"label": "front", "content_uri": "u"}), 404, "Reference set not found"
    )


def test_item_list_and_create_need_the_set(client: TestClient, project: dict) -> None:
    assert_error(client.get(f"{BASE}/nope/items"), 404, "Reference set not found")
    assert_error(client.get("/api/projects/missing/reference-sets/x/items"), 404, "Reference set not found")
    assert_error(
        client.post(f"{BASE}/nope/items", json={"label": "a", "content_text": "t"}),
        404,
        "Reference set not found",
    )


def test_item_by_id_not_found_is_scoped_by_project_and_set(client: TestClient, project: dict) -> None:
    faces, hands = create_set(client, "Faces"), create_set(client, "Hands")
    item = create_item(client, faces["id"])
    for path in (
        f"{BASE}/{hands['id']}/items/{item['id']}",  # another set of the project
        f"/api/projects/missing/reference-sets/{faces['id']}/items/{item['id']}",
        f"{BASE}/{faces['id']}/items/nope",
    ):
        assert_error(client.get(path), 404, "Reference set item not found")
        assert_error(client.put(path, json={"label": "x"}), 404, "Reference set item not found")
        assert_error(client.delete(path), 404, "Reference set item not found")


def test_item_put_needs_one_of_five_fields_before_any_lookup(client: TestClient) -> None:
    path = "/api/projects/missing/reference-sets/x/items/y"
    assert_error(client.put(path, json={}), 400, f"Provide at least one of: {ITEM_FIELDS}")
    assert_error(
        client.put(path, json={"label": None, "metadata_json": None}),
        400,
        f"Provide at least one of: {ITEM_FIELDS}",
    )


def test_item_put_keeps_some_content_after_the_merge(client: TestClient, project: dict) -> None:
    ref_set = create_set(client)
    item = create_item(client, ref_set["id"], content_uri="u", content_text="")
    url = f"{BASE}/{ref_set['id']}/items/{item['id']}"
    content = "Provide at least one of: content_uri, content_text"
    assert_error(client.put(url, json={"content_uri": " "}), 400, content)
    swapped = ok(client.put(url, json={"content_uri": "", "content_text": "t"}))["item"]
    assert (swapped["content_uri"], swapped["content_text"]) == ("", "t")
    assert_error(client.put(url, json={"content_text": ""}), 400, content)
    assert_error(client.put(url, json={"label": ""}), 400, "Field 'label' is required")


def test_item_metadata_takes_any_json_and_sort_order_defaults_to_zero(
    client: TestClient, project: dict
) -> None:
    ref_set = create_set(client)
    item = create_item(client, ref_set["id"], metadata_json={"z": 1, "a": {"y": [1, None]}})
    assert item["metadata_json"] == {"a": {"y": [1, None]}, "z": 1} and item["sort_order"] == 0
    url = f"{BASE}/{ref_set['id']}/items/{item['id']}"
    assert ok(client.put(url, json={"metadata_json": ["tag"]}))["item"]["metadata_json"] == ["tag"]
    assert ok(client.put(url, json={"metadata_json": "note"}))["item"]["metadata_json"] == "note"
    assert ok(client.put(url, json={"sort_order": -2}))["item"]["sort_order"] == -2
    assert create_item(client, ref_set["id"], "back", metadata_json=None)["metadata_json"] == {}


def test_items_are_ordered_by_sort_order_then_newest_change(tmp_path: Path) -> None:
    with frozen_client(tmp_path) as client:
        ref_set = create_set(client)
        a = create_item(client, ref_set["id"], "a", sort_order=1)
        b = create_item(client, ref_set["id"], "b", sort_order=0)
        c = create_item(client, ref_set["id"], "c", sort_order=1)
        d = create_item(client, ref_set["id"], "d", sort_order=0)
        url = f"{BASE}/{ref_set['id']}/items"
        assert [i["label"] for i in ok(client.get(url))["items"]] == ["d", "b", "c", "a"]
        ok(client.put(f"{url}/{b['id']}", json={"label": "b2"}))
        ok(client.put(f"{url}/{a['id']}", json={"label": "a2"}))
        assert [i["id"] for i in ok(client.get(url))["items"]] == [b["id"], d["id"], a["id"], c["id"]]


def test_deleting_a_set_leaves_its_items_unreachable(client: TestClient, project: dict) -> None:
    ref_set = create_set(client)
    item = create_item(client, ref_set["id"])
    ok(client.delete(f"{BASE}/{ref_set['id']}"))
    assert_error(client.get(f"{BASE}/{ref_set['id']}/items"), 404, "Reference set not found")
    item_url = f"{BASE}/{ref_set['id']}/items/{item['id']}"
    assert_error(client.get(item_url), 404, "Reference set item not found")
    assert_error(client.put(item_url, json={"label": "x"}), 404, "Reference set item not found")
    assert_error(client.delete(item_url), 404, "Reference set item not found")
    again = create_set(client)  # the same name is free again, under a new id
    assert again["id"] != ref_set["id"]
    assert ok(client.get(f"{BASE}/{again['id']}/items"))["count"] == 0
    assert len(project_events(client, "demo", "reference_set_item.deleted")) == 0  # no cascade


def test_item_events_carry_project_set_and_item_ids(client: TestClient, project: dict) -> None:
    ref_set = create_set(client)
    body = ok(client.post(f"{BASE}/{ref_set['id']}/items", json={"label": "front", "content_text": "t"}))
    event = ok(client.get(f"/api/events/{body['audit_id']}"))["event"]
    assert event["type"] == "reference_set_item.created"
    assert event["data"]["project_id"] == project["id"]
    assert (
        event["data"]["reference_set_id"] == ref_set["id"] and event["data"]["item_id"] == body["item"]["id"]
    )


# -- values the reference's JSON decoder refuses --------------------------------------------------------

INT64 = (-(2**63), 2**63 - 1)


def nested(depth: int) -> bytes:
    """A JSON array nested `depth` levels deep."""
    return b"[" * depth + b"]" * depth


def post_raw(client: TestClient, url: str, body: bytes, method: str = "POST") -> Any:
    return client.request(method, url, content=body, headers={"content-type": "application/json"})


def test_sort_order_beyond_64_bits_is_a_400_before_any_lookup_and_appends_nothing(
    client: TestClient, project: dict
) -> None:
    """The reference reads sort_order as an i64; a wider number was appended as an event no read
    model can store, and every later request failed."""
    ref_set = create_set(client)
    item = create_item(client, ref_set["id"])
    url = f"{BASE}/{ref_set['id']}/items"
    message = "Field 'sort_order' must be a 64-bit integer"
    before = len(project_events(client, "demo", "reference_set_item.created"))
    for value in (INT64[1] + 1, INT64[0] - 1, 10**30):
        body = {"label": "l", "content_text": "t", "sort_order": value}
        assert_error(client.post(url, json=body), 400, message)
        assert_error(client.put(f"{url}/{item['id']}", json={"sort_order": value}), 400, message)
        missing = "/api/projects/nope/reference-sets/x/items"
        assert_error(client.post(missing, json={"sort_order": value}), 400, message)  # before "label"
        assert_error(client.put(f"{missing}/x", json={"sort_order": value}), 400, message)
    assert len(project_events(client, "demo", "reference_set_item.created")) == before
    for value in INT64:
        assert create_item(client, ref_set["id"], f"edge{value}", sort_order=value)["sort_order"] == value
        assert (
            ok(client.put(f"{url}/{item['id']}", json={"sort_order": value}))["item"]["sort_order"] == value
        )
    assert [i["sort_order"] for i in ok(client.get(url))["items"]] == [INT64[0], INT64[1], INT64[1]]


def test_metadata_nested_as_deep_as_serde_json_refuses_is_a_400_and_appends_nothing(
    client: TestClient, project: dict
) -> None:
    """serde_json refuses a body nested 128 levels deep (the body object is the first level). Deeper
    values were accepted here and, from ~490 levels on, broke a read model for good."""
    ref_set = create_set(client)
    item = create_item(client, ref_set["id"])
    url = f"{BASE}/{ref_set['id']}/items"
    for depth in (127, 500, 900):
        body = b'{"label":"l","content_text":"t","metadata_json":' + nested(depth) + b"}"
        assert_error(post_raw(client, url, body), 400, "Request body is not valid JSON")
        body = b'{"metadata_json":' + nested(depth) + b"}"
        assert_error(
            post_raw(client, f"{url}/{item['id']}", body, "PUT"), 400, "Request body is not valid JSON"
        )
        assert_error(
            post_raw(client, "/api/projects/nope/reference-sets/x/items/x", body, "PUT"),
            400,
            "Request body is not valid JSON",
        )
    deepest = b'{"label":"deep","content_text":"t","metadata_json":' + nested(126) + b"}"
    created = ok(post_raw(client, url, deepest))["item"]
    assert created["label"] == "deep"
    assert ok(post_raw(client, f"{url}/{item['id']}", b'{"metadata_json":' + nested(126) + b"}", "PUT"))
    assert ok(client.get(url))["count"] == 2  # the read models still follow the log


def test_racing_item_updates_both_apply_and_the_later_event_wins(client: TestClient, project: dict) -> None:
    ref_set = create_set(client)
    item = create_item(client, ref_set["id"])
    url = f"{BASE}/{ref_set['id']}/items/{item['id']}"
    responses = race(client, ("PUT", url, {"label": "first"}), ("PUT", url, {"sort_order": 7}))
    assert [r.status_code for r in responses] == [200, 200]
    events = project_events(client, "demo", "reference_set_item.updated")
    assert {r.json()["audit_id"] for r in responses} == {e["event_id"] for e in events}
    current = ok(client.get(url))["item"]
    assert (current["label"], current["sort_order"]) == ("first", 7)
