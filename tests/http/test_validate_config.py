"""`POST /api/projects/{slug}/runs/validate-config` (pipeline spec §1, §2.6; contract §7
pipeline_trigger_endpoints, §8.4): the project lookup first, then `project_root_managed`, then the
whole settings stack (app < project < body overrides, key by key), the manifest and the postprocess
config. The summary reports the resolved paths exactly as written in the winning layer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.config import Settings
from kroma.http.app import create_app
from tests.http.log_seed import assert_error

URL = "/api/projects/demo/runs/validate-config"
EMPTY = {
    "app_settings_loaded": False,
    "project_settings_loaded": False,
    "resolved_manifest_path": None,
    "resolved_postprocess_config_path": None,
}
FAILED = "config_validation_failed"


def app_root(tmp_path: Path) -> Path:
    return tmp_path / "app"


def project_root(tmp_path: Path) -> Path:
    return tmp_path / "app" / "var" / "projects" / "demo"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_json(path: Path, value: Any) -> Path:
    return write(path, json.dumps(value))


def app_toml(tmp_path: Path, text: str) -> Path:
    return write(app_root(tmp_path) / "config" / "pipeline.settings.toml", text)


def app_json(tmp_path: Path, value: Any) -> Path:
    return write_json(app_root(tmp_path) / "config" / "pipeline.settings.json", value)


def project_json(tmp_path: Path, value: Any) -> Path:
    return write_json(project_root(tmp_path) / ".kroma" / "pipeline.settings.json", value)


def config_file(tmp_path: Path, name: str, value: Any = None) -> str:
    """A file under `<app root>/config/` (a valid empty manifest / postprocess config by default)."""
    write_json(app_root(tmp_path) / "config" / name, {} if value is None else value)
    return f"config/{name}"


def summary(client: TestClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post(URL, json={} if body is None else body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"ok", "summary"}
    return answer["summary"]


def failure(client: TestClient, body: dict[str, Any] | None = None) -> str:
    response = client.post(URL, json={} if body is None else body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert (answer["ok"], answer["error_kind"], answer["error_code"]) == (False, "validation", FAILED)
    return answer["error"]


# -- order: the project first, then project_root -------------------------------------------------------


def test_a_missing_project_is_404_even_with_project_root(client: TestClient) -> None:
    response = client.post("/api/projects/nope/runs/validate-config", json={"project_root": "/elsewhere"})
    assert_error(response, 404, "Project not found")


def test_project_root_in_the_body_is_refused(client: TestClient, project: dict) -> None:
    response = client.post(URL, json={"project_root": "/elsewhere"})
    message = "Field 'project_root' is managed by project storage and cannot be overridden"
    assert_error(response, 400, message, "project_root_managed")


def test_a_blank_project_root_counts_as_absent(client: TestClient, project: dict) -> None:
    assert summary(client, {"project_root": "   "}) == EMPTY


def test_project_root_is_checked_before_the_settings(client: TestClient, project: dict, tmp_path: Path) -> None:
    project_json(tmp_path, {"manifest_path": 1})
    response = client.post(URL, json={"project_root": "x"})
    assert response.json()["error_code"] == "project_root_managed"


# -- summary -----------------------------------------------------------------------------------------


def test_no_settings_files_load_nothing(client: TestClient, project: dict) -> None:
    assert summary(client) == EMPTY


def test_files_that_set_no_key_do_not_count_as_loaded(client: TestClient, project: dict, tmp_path: Path) -> None:
    app_toml(tmp_path, "[pipeline]\nunknown = 1\n")
    project_json(tmp_path, {"pipeline": {}})
    assert summary(client) == EMPTY


def test_app_toml_paths_are_reported_as_written(client: TestClient, project: dict, tmp_path: Path) -> None:
    config_file(tmp_path, "m.json")
    config_file(tmp_path, "pp.json")
    app_toml(tmp_path, '[pipeline]\nmanifest_path = "  ./config/m.json "\npostprocess_config_path = "config/pp.json"\n')
    assert summary(client) == {
        "app_settings_loaded": True,
        "project_settings_loaded": False,
        "resolved_manifest_path": "./config/m.json",
        "resolved_postprocess_config_path": "config/pp.json",
    }


def test_app_json_is_the_fallback_when_there_is_no_toml(client: TestClient, project: dict, tmp_path: Path) -> None:
    manifest = config_file(tmp_path, "m.json")
    app_json(tmp_path, {"manifest_path": manifest})  # the root itself as the pipeline object
    assert summary(client) == {**EMPTY, "app_settings_loaded": True, "resolved_manifest_path": manifest}

    app_toml(tmp_path, "[pipeline.postprocess]\ncolor = true\n")
    assert summary(client) == {**EMPTY, "app_settings_loaded": True}, "the JSON is ignored once the TOML exists"


def test_project_layer_wins_over_the_app_layer_key_by_key(client: TestClient, project: dict, tmp_path: Path) -> None:
    app_toml(
        tmp_path,
        f'[pipeline]\nmanifest_path = "{config_file(tmp_path, "app.json")}"\n'
        f'postprocess_config_path = "{config_file(tmp_path, "pp.json")}"\n',
    )
    project_json(tmp_path, {"pipeline": {"manifest_path": config_file(tmp_path, "project.json")}})
    assert summary(client) == {
        "app_settings_loaded": True,
        "project_settings_loaded": True,
        "resolved_manifest_path": "config/project.json",
        "resolved_postprocess_config_path": "config/pp.json",
    }


def test_body_overrides_win_over_both_layers(client: TestClient, project: dict, tmp_path: Path) -> None:
    app_toml(tmp_path, f'[pipeline]\npostprocess_config_path = "{config_file(tmp_path, "pp.json")}"\n')
    project_json(tmp_path, {"manifest_path": config_file(tmp_path, "project.json")})
    body = {"manifest_path": f" {config_file(tmp_path, 'mine.json')} ", "postprocess_config_path": "  "}
    assert summary(client, body) == {
        "app_settings_loaded": True,
        "project_settings_loaded": True,
        "resolved_manifest_path": "config/mine.json",
        "resolved_postprocess_config_path": "config/pp.json",
    }
    body = {"postprocess_config_path": config_file(tmp_path, "pp2.json")}
    assert summary(client, body)["resolved_postprocess_config_path"] == "config/pp2.json"


def test_overrides_alone_do_not_count_as_a_loaded_layer(client: TestClient, project: dict, tmp_path: Path) -> None:
    manifest = config_file(tmp_path, "m.json")
    assert summary(client, {"manifest_path": manifest}) == {**EMPTY, "resolved_manifest_path": manifest}


def test_project_layer_is_read_from_the_storage_project_root(client: TestClient, project: dict, tmp_path: Path) -> None:
    project_json(tmp_path, {"manifest_path": config_file(tmp_path, "default.json")})
    write_json(app_root(tmp_path) / "custom" / ".kroma" / "pipeline.settings.json", {"manifest_path": config_file(tmp_path, "custom.json")})
    assert client.put("/api/projects/demo/storage/local", json={"project_root": "custom"}).status_code == 200
    assert summary(client)["resolved_manifest_path"] == "config/custom.json"


def test_explicit_settings_paths(client: TestClient, project: dict, tmp_path: Path) -> None:
    app_toml(tmp_path, f'manifest_path = "{config_file(tmp_path, "default.json")}"\n')
    project_json(tmp_path, {"postprocess_config_path": config_file(tmp_path, "pp.json")})
    write(app_root(tmp_path) / "alt" / "app.TOML", f'[pipeline]\nmanifest_path = "{config_file(tmp_path, "alt.json")}"\n')
    write_json(app_root(tmp_path) / "alt" / "app.conf", {"manifest_path": config_file(tmp_path, "conf.json")})
    write_json(project_root(tmp_path) / "mine.json", {"postprocess_config_path": config_file(tmp_path, "pp2.json")})
    absolute = write_json(app_root(tmp_path) / "abs" / "p.json", {"postprocess_config_path": config_file(tmp_path, "pp3.json")})

    # relative app path -> app root, .TOML (any case) is TOML; relative project path -> project root
    assert summary(client, {"app_settings_path": "alt/app.TOML", "project_settings_path": "mine.json"}) == {
        "app_settings_loaded": True,
        "project_settings_loaded": True,
        "resolved_manifest_path": "config/alt.json",
        "resolved_postprocess_config_path": "config/pp2.json",
    }
    # any other extension is JSON; an absolute project path is taken as is; a missing file loads nothing
    answer = summary(client, {"app_settings_path": "alt/app.conf", "project_settings_path": str(absolute)})
    assert (answer["resolved_manifest_path"], answer["resolved_postprocess_config_path"]) == (
        "config/conf.json",
        "config/pp3.json",
    )
    assert summary(client, {"app_settings_path": "alt/none.toml", "project_settings_path": "none.json"}) == EMPTY


def test_validation_skips_scene_files_prompts_and_the_batch_limit(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    manifest = {"scene_refs": ["missing/a.png", "missing/b.png"], "safe_batch_limit": 1, "prompts": {"style_base": ""}}
    path = config_file(tmp_path, "m.json", manifest)
    assert summary(client, {"manifest_path": path})["resolved_manifest_path"] == path


def test_validate_config_appends_nothing(client: TestClient, project: dict, tmp_path: Path) -> None:
    before = client.get("/api/events", params={"limit": 1000}).json()["count"]
    summary(client)
    failure(client, {"manifest_path": "config/missing.json"})
    assert client.get("/api/events", params={"limit": 1000}).json()["count"] == before
    assert not project_root(tmp_path).exists()


# -- failures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """One project for cases that each write a settings file and remove it again."""
    tmp_path = tmp_path_factory.mktemp("shared")
    settings = Settings(data_dir=str(tmp_path / "data"), workspace_root=str(tmp_path / "app"), auth_dev_bypass=True)
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).status_code == 200
        yield client, tmp_path


@pytest.mark.parametrize(
    ("layer", "document", "detail"),
    [
        ("project", {"pipeline": {"manifest_path": 3}}, "pipeline settings field 'manifest_path' has invalid type"),
        ("project", {"manifest_path": "   "}, "pipeline settings field 'manifest_path' has invalid type"),
        ("project", [1], "pipeline settings root must be a JSON object"),
        ("project", {"pipeline": "x"}, "pipeline settings root must be a JSON object"),
        ("app", {"pipeline": {"postprocess": {"upscale_backend": "cuda"}}},
         "pipeline settings field 'postprocess.upscale_backend' has invalid type"),
        ("app", {"postprocess": []}, "pipeline settings field 'postprocess' has invalid type"),
        ("app", {"postprocess": {"bg_remove_backends": ["rembg", " "]}},
         "pipeline settings field 'postprocess.bg_remove_backends' has invalid type"),
    ],
)
def test_settings_layer_errors(
    shared: tuple[TestClient, Path], layer: str, document: Any, detail: str
) -> None:
    client, tmp_path = shared
    path = (project_json if layer == "project" else app_json)(tmp_path, document)
    try:
        assert failure(client) == f"settings layer validation failed: {detail}"
    finally:
        path.unlink()
    assert summary(client) == EMPTY


def test_settings_parse_errors_name_the_file(client: TestClient, project: dict, tmp_path: Path) -> None:
    broken = write(project_root(tmp_path) / ".kroma" / "pipeline.settings.json", "{broken")
    assert failure(client).startswith(f"settings layer validation failed: failed to parse pipeline settings JSON '{broken}': ")
    broken.unlink()
    toml = app_toml(tmp_path, "[pipeline\n")
    assert failure(client).startswith(f"settings layer validation failed: failed to parse pipeline settings TOML '{toml}': ")


def test_manifest_errors_name_the_absolute_path(client: TestClient, project: dict, tmp_path: Path) -> None:
    app = app_root(tmp_path)
    missing = f"{app}/config/missing.json"
    assert failure(client, {"manifest_path": "config/missing.json"}) == (
        f"planning manifest validation failed ({missing}): failed to read planning manifest '{missing}': "
        "No such file or directory (os error 2)"
    )
    config_file(tmp_path, "bad.json", {"generation": {"max_candidates": 0}})
    assert failure(client, {"manifest_path": "./config/bad.json"}) == (
        f"planning manifest validation failed ({app}/./config/bad.json): "
        "planning manifest field 'generation.max_candidates' must be an integer >= 1"
    )
    config_file(tmp_path, "list.json", [])
    assert failure(client, {"manifest_path": "config/list.json"}) == (
        f"planning manifest validation failed ({app}/config/list.json): planning manifest must be a JSON object"
    )


def test_a_manifest_named_by_the_project_layer_resolves_against_the_app_root(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    write_json(project_root(tmp_path) / "config" / "m.json", {})
    project_json(tmp_path, {"manifest_path": "config/m.json"})
    assert failure(client).startswith(f"planning manifest validation failed ({app_root(tmp_path)}/config/m.json): ")
    config_file(tmp_path, "m.json")
    assert summary(client)["resolved_manifest_path"] == "config/m.json"


def test_postprocess_config_errors(client: TestClient, project: dict, tmp_path: Path) -> None:
    app = app_root(tmp_path)
    path = config_file(tmp_path, "pp.json", {"upscale": {"backend": " Cuda "}})
    assert failure(client, {"postprocess_config_path": path}).startswith(
        f"postprocess config validation failed ({app}/config/pp.json): invalid upscale backend 'cuda'. Expected "
    )
    missing = f"{app}/config/none.json"
    assert failure(client, {"postprocess_config_path": "config/none.json"}).startswith(
        f"postprocess config validation failed ({missing}): failed to read postprocess config '{missing}': "
    )


def test_first_failure_wins_settings_then_manifest_then_postprocess(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    body = {"manifest_path": "config/missing.json", "postprocess_config_path": "config/missing-pp.json"}
    project_json(tmp_path, {"postprocess": {"color": "yes"}})
    assert failure(client, body).startswith("settings layer validation failed: ")
    project_json(tmp_path, {})
    assert failure(client, body).startswith("planning manifest validation failed (")
    body["manifest_path"] = config_file(tmp_path, "m.json")
    assert failure(client, body).startswith("postprocess config validation failed (")


def test_the_body_must_be_a_json_object(client: TestClient, project: dict) -> None:
    response = client.post(URL, content=b"[]", headers={"content-type": "application/json"})
    assert_error(response, 400, "Request body must be a JSON object")
    response = client.post(URL, json={"manifest_path": 5})
    assert response.status_code == 400
    assert response.json()["error_code"] == "validation_error"
