"""Asset links through the HTTP contract (§3.6, §7 asset_links_endpoints, §8)."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from kroma.domain.assets import AssetRecord, asset_recorded
from tests.http.log_seed import append, assert_error, event_of
from tests.http.records_support import project_events, race

LINKS = "/api/projects/demo/asset-links"
TYPES_MESSAGE = "Field 'link_type' must be one of: derived_from, variant_of, mask_for, reference_of"


@pytest.fixture
def assets(client: TestClient, project: dict) -> dict:
    """Assets a1, a2, a3 in the demo project and o1 in another project, recorded as the run engine will."""
    other = client.post("/api/projects", json={"name": "Other", "slug": "other"}).json()["project"]
    append(
        client,
        *(
            asset_recorded(AssetRecord(id=a, project_id=project["id"], kind="image"))
            for a in ("a1", "a2", "a3")
        ),
        asset_recorded(AssetRecord(id="o1", project_id=other["id"])),
    )
    return {"project": project, "other": other}


def _create(client: TestClient, **body: str) -> dict:
    response = client.post(LINKS, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_crud_with_filters(client: TestClient, assets: dict) -> None:
    body = _create(client, parent_asset_id="a1", child_asset_id="a2")
    link = body["asset_link"]
    assert set(link) == {
        "id",
        "project_id",
        "parent_asset_id",
        "child_asset_id",
        "link_type",
        "created_at",
        "updated_at",
    }
    assert link["link_type"] == "derived_from" and link["project_id"] == assets["project"]["id"]
    assert event_of(client, body["audit_id"]).type == "asset_link.created"
    mask = _create(client, parent_asset_id=" a1 ", child_asset_id="a3", link_type=" MASK_for ")["asset_link"]
    assert (mask["parent_asset_id"], mask["link_type"]) == ("a1", "mask_for")

    assert client.get(f"{LINKS}/{link['id']}").json() == {"ok": True, "asset_link": link}
    assert client.get(LINKS).json()["count"] == 2
    by_child = client.get(f"{LINKS}?asset_id=a2").json()
    assert by_child["count"] == 1 and by_child["asset_links"][0]["id"] == link["id"]
    assert client.get(f"{LINKS}?asset_id=a1").json()["count"] == 2  # parent or child
    assert client.get(f"{LINKS}?asset_id=%20%20").json()["count"] == 2  # blank is ignored
    by_type = client.get(f"{LINKS}?link_type=Mask_For").json()
    assert [x["id"] for x in by_type["asset_links"]] == [mask["id"]]

    updated = client.put(
        f"{LINKS}/{link['id']}", json={"child_asset_id": "a3", "link_type": "variant_of"}
    ).json()
    assert (
        updated["asset_link"]["child_asset_id"] == "a3" and updated["asset_link"]["link_type"] == "variant_of"
    )
    assert (
        updated["asset_link"]["parent_asset_id"] == "a1"
        and updated["asset_link"]["created_at"] == link["created_at"]
    )
    assert event_of(client, updated["audit_id"]).type == "asset_link.updated"

    deleted = client.delete(f"{LINKS}/{link['id']}")
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] is True and deleted.json()["id"] == link["id"]
    assert event_of(client, deleted.json()["audit_id"]).type == "asset_link.deleted"
    assert_error(client.get(f"{LINKS}/{link['id']}"), 404, "Asset link not found")
    assert_error(client.delete(f"{LINKS}/{link['id']}"), 404, "Asset link not found")
    assert client.get(LINKS).json()["count"] == 1


def test_create_validation_order_before_the_project_lookup(client: TestClient) -> None:
    missing = "/api/projects/nope/asset-links"
    cases = [
        ({}, "Field 'parent_asset_id' is required"),
        ({"parent_asset_id": "  ", "child_asset_id": "b"}, "Field 'parent_asset_id' is required"),
        ({"parent_asset_id": "a"}, "Field 'child_asset_id' is required"),
        ({"parent_asset_id": "a", "child_asset_id": " a "}, "parent_asset_id and child_asset_id must differ"),
        (
            {"parent_asset_id": "a", "child_asset_id": "a", "link_type": "bogus"},
            "parent_asset_id and child_asset_id must differ",
        ),
        ({"parent_asset_id": "a", "child_asset_id": "b", "link_type": " "}, "Field 'link_type' is required"),
        ({"parent_asset_id": "a", "child_asset_id": "b", "link_type": "bogus"}, TYPES_MESSAGE),
    ]
    for body, message in cases:
        assert_error(client.post(missing, json=body), 400, message)
    assert_error(
        client.post(missing, json={"parent_asset_id": "a", "child_asset_id": "b"}), 404, "Project not found"
    )


def test_bad_link_type_is_reported_even_when_the_child_does_not_exist(
    client: TestClient, assets: dict
) -> None:
    body = {"parent_asset_id": "a1", "child_asset_id": "nope", "link_type": "sibling_of"}
    assert_error(client.post(LINKS, json=body), 400, TYPES_MESSAGE)


def test_assets_must_exist_in_this_project_parent_first(client: TestClient, assets: dict) -> None:
    assert_error(
        client.post(LINKS, json={"parent_asset_id": "ghost", "child_asset_id": "nope"}),
        400,
        "Asset 'ghost' was not found in this project",
    )
    assert_error(
        client.post(LINKS, json={"parent_asset_id": "a1", "child_asset_id": "o1"}),
        400,
        "Asset 'o1' was not found in this project",
    )
    assert client.get(LINKS).json()["count"] == 0


def test_duplicates_are_rejected_per_type(client: TestClient, assets: dict) -> None:
    _create(client, parent_asset_id="a1", child_asset_id="a2")
    assert_error(
        client.post(
            LINKS, json={"parent_asset_id": "a1", "child_asset_id": "a2", "link_type": "derived_from"}
        ),
        400,
        "Asset link already exists",
    )
    _create(client, parent_asset_id="a1", child_asset_id="a2", link_type="variant_of")
    _create(client, parent_asset_id="a2", child_asset_id="a1")


def test_update_rules_and_their_order(client: TestClient, assets: dict) -> None:
    first = _create(client, parent_asset_id="a1", child_asset_id="a2")["asset_link"]
    second = _create(client, parent_asset_id="a1", child_asset_id="a3")["asset_link"]
    url = f"{LINKS}/{first['id']}"
    at_least_one = "Provide at least one of: parent_asset_id, child_asset_id, link_type"
    assert_error(client.put(f"{LINKS}/missing", json={}), 400, at_least_one)
    assert_error(client.put(f"{LINKS}/missing", json={"parent_asset_id": None}), 400, at_least_one)
    assert_error(client.put("/api/projects/nope/asset-links/x", json={}), 400, at_least_one)
    assert_error(client.put(f"{LINKS}/missing", json={"link_type": "bogus"}), 404, "Asset link not found")
    assert_error(
        client.put("/api/projects/nope/asset-links/x", json={"link_type": "x"}), 404, "Asset link not found"
    )
    assert_error(client.put(url, json={"parent_asset_id": " "}), 400, "Field 'parent_asset_id' is required")
    assert_error(
        client.put(url, json={"child_asset_id": "a1"}), 400, "parent_asset_id and child_asset_id must differ"
    )
    assert_error(client.put(url, json={"link_type": ""}), 400, "Field 'link_type' is required")
    assert_error(client.put(url, json={"child_asset_id": "ghost", "link_type": "bogus"}), 400, TYPES_MESSAGE)
    assert_error(
        client.put(url, json={"child_asset_id": "o1"}), 400, "Asset 'o1' was not found in this project"
    )
    assert_error(client.put(url, json={"child_asset_id": "a3"}), 400, "Asset link already exists")
    same = client.put(url, json={"child_asset_id": "a2"})  # unchanged values do not collide with itself
    assert same.status_code == 200 and same.json()["asset_link"]["child_asset_id"] == "a2"
    assert client.get(f"{LINKS}/{second['id']}").json()["asset_link"] == second


def test_list_link_type_filter_is_validated_after_the_project_lookup(
    client: TestClient, assets: dict
) -> None:
    assert_error(client.get("/api/projects/nope/asset-links?link_type=bogus"), 404, "Project not found")
    assert_error(client.get(f"{LINKS}?link_type=bogus"), 400, TYPES_MESSAGE)
    assert_error(client.get(f"{LINKS}?link_type="), 400, "Field 'link_type' is required")


def test_list_is_updated_at_desc_with_log_order_breaking_ties(client: TestClient, assets: dict) -> None:
    first = _create(client, parent_asset_id="a1", child_asset_id="a2")["asset_link"]
    second = _create(client, parent_asset_id="a1", child_asset_id="a3")["asset_link"]
    assert [x["id"] for x in client.get(LINKS).json()["asset_links"]] == [second["id"], first["id"]]
    client.put(f"{LINKS}/{first['id']}", json={"link_type": "reference_of"})
    assert [x["id"] for x in client.get(LINKS).json()["asset_links"]] == [first["id"], second["id"]]


def test_detail_and_delete_of_missing_project_use_the_link_message(client: TestClient) -> None:
    assert_error(client.get("/api/projects/nope/asset-links/x"), 404, "Asset link not found")
    assert_error(client.delete("/api/projects/nope/asset-links/x"), 404, "Asset link not found")
    assert_error(client.get("/api/projects/nope/asset-links"), 404, "Project not found")


def test_link_of_another_project_is_not_found(client: TestClient, assets: dict) -> None:
    other = client.post(
        "/api/projects/other/asset-links", json={"parent_asset_id": "o1", "child_asset_id": "o2"}
    )
    assert_error(other, 400, "Asset 'o2' was not found in this project")
    link = _create(client, parent_asset_id="a1", child_asset_id="a2")["asset_link"]
    assert_error(client.get(f"/api/projects/other/asset-links/{link['id']}"), 404, "Asset link not found")
    assert_error(client.delete(f"/api/projects/other/asset-links/{link['id']}"), 404, "Asset link not found")
    assert client.get("/api/projects/other/asset-links").json()["count"] == 0


def test_racing_creates_of_one_link_admit_exactly_one(client: TestClient, assets: dict) -> None:
    body = {"parent_asset_id": "a1", "child_asset_id": "a2", "link_type": "variant_of"}
    responses = race(client, ("POST", LINKS, body), ("POST", LINKS, body))
    assert sorted(r.status_code for r in responses) == [200, 400]
    assert_error(next(r for r in responses if r.status_code == 400), 400, "Asset link already exists")
    assert client.get(LINKS).json()["count"] == 1
    assert len(project_events(client, "demo", "asset_link.created")) == 1


def test_racing_updates_of_one_link_both_apply_and_the_later_event_wins(
    client: TestClient, assets: dict
) -> None:
    link = _create(client, parent_asset_id="a1", child_asset_id="a2")["asset_link"]
    url = f"{LINKS}/{link['id']}"
    responses = race(client, ("PUT", url, {"link_type": "mask_for"}), ("PUT", url, {"child_asset_id": "a3"}))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    events = project_events(client, "demo", "asset_link.updated")
    assert {r.json()["audit_id"] for r in responses} == {e["event_id"] for e in events}
    # the later one was decided on the earlier one's result: nothing is lost
    current = client.get(url).json()["asset_link"]
    assert (current["child_asset_id"], current["link_type"]) == ("a3", "mask_for")
