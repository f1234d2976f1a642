"""The pipeline's utility commands (`kroma generate-one|upscale|color|bgremove|qa|archive-bad|
validate-pipeline-config`) on small Pillow images in a temporary folder that plays the app root."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from kroma.cli import main
from kroma.imaging.provenance import read_provenance
from tests.fakes.openai_server import FakeOpenAI

GRAY = (128, 128, 128)
RED = (200, 40, 40)
STAMP = r"\d{10}-\d{3}"  # files.stamp(): <unix seconds>-<milliseconds>


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder (the utility commands' app root), with no OpenAI key anywhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def kroma(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def opened(path: Path) -> Image.Image:
    with Image.open(path) as found:
        found.load()
        return found


# -- qa ------------------------------------------------------------------------------------------


def test_qa_prints_the_summary_line_and_exits_0_when_only_soft_warnings(app: Path) -> None:
    image(app / "shots" / "gray.png", GRAY)
    image(app / "shots" / "deep" / "red.png", RED)
    result = kroma("qa", "--input", "shots")
    assert result.exit_code == 0, result.output
    assert result.stdout == "QA checked 2 file(s): hard_failures=0, soft_warnings=1, input=shots\n"
    assert result.stderr == ""


@pytest.mark.parametrize(("flag", "soft"), [("--fail-on-chroma-exceed", 0), ("--enforce-grayscale", 1)])
def test_qa_exits_1_with_the_reference_message_on_hard_failures(app: Path, flag: str, soft: int) -> None:
    image(app / "shots" / "gray.png", GRAY)
    image(app / "shots" / "red.png", RED)
    result = kroma("qa", "--input", "shots", flag)
    assert result.exit_code == 1
    assert result.stdout == f"QA checked 2 file(s): hard_failures=1, soft_warnings={soft}, input=shots\n"
    assert result.stderr == "QA mode found hard failures.\n"


def test_qa_json_prints_the_report_with_a_verdict_per_file(app: Path) -> None:
    image(app / "shots" / "a.png", GRAY)
    image(app / "shots" / "b.png", RED)
    (app / "shots" / "notes.txt").write_text("not an image")
    result = kroma("qa", "--input", str(app / "shots"), "--json", "--max-chroma-delta", "1.5")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["input"] == "shots"  # an absolute path under the current folder is shown relative
    assert report["settings"] == {"max_chroma_delta": 1.5, "enforce_grayscale": False, "fail_on_chroma_exceed": False}
    assert report["summary"] == {"total_files": 2, "hard_failures": 0, "soft_warnings": 1}
    first, second = report["files"]
    assert first == {
        "file": "shots/a.png",
        "chroma_delta": 0.0,
        "grayscale_like": True,
        "hard_fail_reasons": [],
        "soft_warnings": [],
    }
    assert second["file"] == "shots/b.png" and second["chroma_delta"] == 106.6667
    assert second["soft_warnings"] == ["chroma_exceeds_threshold"] and second["grayscale_like"] is False


def test_qa_reports_a_missing_input_an_empty_folder_and_an_unreadable_image_as_hard_failures(app: Path) -> None:
    missing = kroma("qa", "--input", "nowhere", "--json")
    assert missing.exit_code == 1 and missing.stderr == "QA mode found hard failures.\n"
    assert json.loads(missing.stdout)["files"] == [
        {"file": "nowhere", "error": "input_not_found", "hard_fail_reasons": ["input_not_found"], "soft_warnings": []}
    ]
    (app / "empty").mkdir()
    empty = kroma("qa", "--input", "empty")
    assert empty.exit_code == 1
    assert empty.stdout == "QA checked 0 file(s): hard_failures=1, soft_warnings=0, input=empty\n"
    (app / "broken.png").write_bytes(b"not a png")
    broken = json.loads(kroma("qa", "--input", "broken.png", "--json").stdout)
    assert broken["files"][0]["hard_fail_reasons"] == ["image_read_failed"]
    assert broken["files"][0]["chroma_delta"] is None


def test_qa_with_the_output_guard_disabled_checks_nothing(app: Path) -> None:
    result = kroma("qa", "--input", "nowhere", "--output-guard-enabled", "false")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"ok": True, "skipped": True, "enabled": False, "reason": "output_guard_disabled"}


@pytest.mark.parametrize("value", ["-1", "nan", "abc"])
def test_qa_refuses_an_invalid_max_chroma_delta(app: Path, value: str) -> None:
    image(app / "a.png", GRAY)
    result = kroma("qa", "--input", "a.png", f"--max-chroma-delta={value}")
    assert result.exit_code == 1
    assert result.stderr == f"invalid max_chroma_delta '{value}'\n"


# -- archive-bad -----------------------------------------------------------------------------------


def test_archive_bad_moves_every_image_of_a_folder_to_archive_bad(app: Path) -> None:
    image(app / "rejects" / "Shot 1.png", RED)
    image(app / "rejects" / "sub" / "two.jpg", RED)
    (app / "rejects" / "readme.txt").write_text("stays")
    result = kroma("archive-bad", "--input", "rejects", "--project-root", "var/projects/demo")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["ok"] is True and answer["moved_count"] == 2
    assert answer["archive_dir"] == "var/projects/demo/archive/bad"
    assert [m["from"] for m in answer["moved"]] == ["rejects/Shot 1.png", "rejects/sub/two.jpg"]
    names = [Path(m["to"]).name for m in answer["moved"]]
    assert re.fullmatch(rf"shot_1_bad_{STAMP}\.png", names[0])
    assert re.fullmatch(rf"two_bad_{STAMP}\.jpg", names[1])
    for moved in answer["moved"]:
        assert (app / moved["to"]).is_file() and not (app / moved["from"]).exists()
    assert (app / "rejects" / "readme.txt").is_file()


def test_archive_bad_moves_a_single_file(app: Path) -> None:
    image(app / "bad.png", RED)
    result = kroma("archive-bad", "--input", "bad.png", "--project-root", str(app / "proj"))
    answer = json.loads(result.stdout)
    assert answer["moved_count"] == 1 and answer["moved"][0]["from"] == "bad.png"
    assert answer["moved"][0]["to"].startswith("proj/archive/bad/bad_bad_")


def test_archive_bad_messages_for_a_missing_input_and_a_folder_without_images(app: Path) -> None:
    missing = kroma("archive-bad", "--input", "gone.png", "--project-root", "proj")
    assert missing.exit_code == 1 and missing.stderr == "archive-bad input not found: gone.png\n"
    (app / "texts").mkdir()
    (app / "texts" / "a.txt").write_text("x")
    nothing = kroma("archive-bad", "--input", "texts", "--project-root", "proj")
    assert nothing.exit_code == 1 and nothing.stderr == "archive-bad found no image files to move\n"


# -- validate-pipeline-config ----------------------------------------------------------------------


def test_validate_pipeline_config_prints_the_summary_of_the_layers(app: Path) -> None:
    (app / "config").mkdir()
    (app / "config" / "m.json").write_text(json.dumps({"prompts": {"style_base": "Ink."}}))
    (app / "config" / "pipeline.settings.toml").write_text('[pipeline]\nmanifest_path = "config/m.json"\n')
    result = kroma("validate-pipeline-config")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "ok": True,
        "summary": {
            "app_settings_loaded": True,
            "project_settings_loaded": False,
            "resolved_manifest_path": "config/m.json",
            "resolved_postprocess_config_path": None,
        },
    }


def test_validate_pipeline_config_fails_on_a_bad_manifest_with_the_reference_message(app: Path) -> None:
    (app / "config").mkdir()
    (app / "config" / "bad.json").write_text("[1, 2]")
    result = kroma("validate-pipeline-config", "--manifest", "config/bad.json")
    assert result.exit_code == 1
    assert result.stderr == (
        f"planning manifest validation failed ({app}/config/bad.json): planning manifest must be a JSON object\n"
    )


def test_validate_pipeline_config_reads_the_project_layer_of_the_project_root(app: Path) -> None:
    settings = app / "proj" / ".kroma" / "pipeline.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"pipeline": {"postprocess_config_path": "config/pp.json"}}))
    (app / "config").mkdir()
    (app / "config" / "pp.json").write_text("{}")
    summary = json.loads(kroma("validate-pipeline-config", "--project-root", "proj").stdout)["summary"]
    assert summary["project_settings_loaded"] is True
    assert summary["resolved_postprocess_config_path"] == "config/pp.json"


# -- generate-one ----------------------------------------------------------------------------------


def test_generate_one_with_the_local_provider_writes_the_image_and_archives_the_one_it_replaces(
    app: Path,
) -> None:
    image(app / "scenes" / "one.png", GRAY, (40, 30))
    (app / "inputs.json").write_text(json.dumps(["scenes/one.png"]))
    args = ["generate-one", "--project-slug", "demo", "--prompt", "Ink drawing.", "--input-images-file",
            "inputs.json", "--output", "out/one.png", "--json"]
    result = kroma(*args)  # no key: the local provider
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer == {
        "ok": True,
        "project_slug": "demo",
        "output": "out/one.png",
        "input_images": ["scenes/one.png"],
        "provider": "local",
        "model": "kroma-ink-1",
        "size": "40x30",
        "quality": "standard",
        "seed": 0,
        "request_id": None,
    }
    written = (app / "out" / "one.png").read_bytes()
    assert opened(app / "out" / "one.png").size == (40, 30)
    assert read_provenance(written)["provider"] == "local"
    again = kroma(*args[:-1], "--size", "20x16")
    assert again.exit_code == 0
    assert again.stdout.startswith("Generated out/one.png with local (model kroma-ink-1, size 20x16")
    archived = list((app / "var" / "projects" / "demo" / "archive" / "replaced").iterdir())
    assert len(archived) == 1 and re.fullmatch(rf"one_replaced_{STAMP}\.png", archived[0].name)
    assert archived[0].read_bytes() == written


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "generate-one input-images file not found: inputs.json"),
        ('{"scene": "a.png"}', "generate-one --input-images-file must contain a JSON array of paths"),
        ("[1, 2]", "generate-one --input-images-file must contain a JSON array of paths"),
        ("not json", "generate-one --input-images-file must contain a JSON array of paths"),
        ("[]", "generate-one --input-images-file contains no image paths"),
        ('["  "]', "generate-one --input-images-file contains no image paths"),
        ('["missing.png"]', "generate-one input image not found: missing.png"),
    ],
)
def test_generate_one_reports_a_bad_input_images_file_verbatim(app: Path, content: str | None, message: str) -> None:
    if content is not None:
        (app / "inputs.json").write_text(content)
    result = kroma("generate-one", "--project-slug", "demo", "--prompt", "p", "--input-images-file", "inputs.json",
                   "--output", "o.png")
    assert result.exit_code == 1
    assert result.stderr == message + "\n"
    assert not (app / "o.png").exists()


def test_generate_one_uses_openai_when_the_folder_env_file_holds_a_key(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_IMAGE_MODEL", "OPENAI_IMAGE_SIZE", "OPENAI_IMAGE_QUALITY"):
        monkeypatch.delenv(name, raising=False)
    image(app / "scene.png", GRAY)
    image(app / "style.png", RED)
    (app / "inputs.json").write_text('["scene.png", "style.png"]')
    with FakeOpenAI(api_key="sk-cli-test") as fake:
        (app / ".env").write_text(f"OPENAI_API_KEY={fake.api_key}\nOPENAI_BASE_URL={fake.base_url}\n")
        result = kroma("generate-one", "--project-slug", "demo", "--prompt", "Ink.", "--input-images-file",
                       "inputs.json", "--output", "o.png", "--size", "1024x1024", "--quality", "low", "--json")
        assert result.exit_code == 0, result.output
        sent = fake.edit_requests
    answer = json.loads(result.stdout)
    assert (answer["provider"], answer["model"], answer["size"], answer["quality"]) == (
        "openai", "gpt-image-1", "1024x1024", "low"
    )
    assert len(sent) == 1 and sent[0].authorization == "Bearer sk-cli-test"
    assert (sent[0].field("size"), sent[0].field("quality"), sent[0].field("prompt")) == ("1024x1024", "low", "Ink.")
    assert [f.filename for f in sent[0].files] == ["scene.png", "style.png"]
    assert opened(app / "o.png").format == "PNG"


def test_generate_one_with_openai_and_no_key_says_the_key_is_missing(app: Path) -> None:
    image(app / "a.png", GRAY)
    (app / "inputs.json").write_text('["a.png"]')
    result = kroma("generate-one", "--project-slug", "demo", "--prompt", "p", "--input-images-file", "inputs.json",
                   "--output", "o.png", "--provider", "openai")
    assert result.exit_code == 1 and result.stderr == "Missing OPENAI_API_KEY in environment or .env\n"


def test_generate_one_refuses_an_invalid_project_slug_and_an_empty_prompt(app: Path) -> None:
    image(app / "a.png", GRAY)
    (app / "inputs.json").write_text('["a.png"]')
    base = ["generate-one", "--input-images-file", "inputs.json", "--output", "o.png"]
    slug = kroma(*base, "--project-slug", "bad slug", "--prompt", "p")
    assert slug.exit_code == 1 and slug.stderr == "Invalid project slug for pipeline run\n"
    prompt = kroma(*base, "--project-slug", "demo", "--prompt", "  ")
    assert prompt.exit_code == 1 and prompt.stderr == "generate-one requires non-empty prompt\n"


# -- upscale / color / bgremove (the engine's pass adapters, builtin backends) ------------------------


def test_upscale_builtin_writes_the_scaled_image_and_the_adapter_record(app: Path) -> None:
    image(app / "a.png", RED, (20, 10))
    result = kroma("upscale", "--input", "a.png", "--output", "up/a.png", "--upscale-backend", "builtin",
                   "--upscale-scale", "3", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["results"] == [
        {"backend": "builtin", "input": "a.png", "output": "up/a.png", "scale": 3, "model": "lanczos"}
    ]
    assert answer["ok"] is True and answer["processed"] == 1
    assert opened(app / "up" / "a.png").size == (60, 30)
    assert read_provenance((app / "up" / "a.png").read_bytes()) == {"pass": "upscale", "derived_from": "a.png"}


def test_upscale_of_a_folder_mirrors_it_in_the_output_folder_in_the_output_format(app: Path) -> None:
    image(app / "in" / "a.png", GRAY, (8, 8))
    image(app / "in" / "sub" / "b.jpg", GRAY, (8, 8))
    result = kroma("upscale", "--input", "in", "--output", "out", "--upscale-backend", "builtin")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "upscaled in/a.png -> out/a.png (builtin x2, lanczos)",
        "upscaled in/sub/b.jpg -> out/sub/b.png (builtin x2, lanczos)",
    ]
    assert opened(app / "out" / "sub" / "b.png").size == (16, 16)


def test_upscale_replacing_an_output_archives_the_old_file_beside_it(app: Path) -> None:
    image(app / "a.png", GRAY, (8, 8))
    for _ in range(2):
        assert kroma("upscale", "--input", "a.png", "--output", "up/a.png", "--upscale-backend", "builtin").exit_code == 0
    assert [p.name.split("_replaced_")[0] for p in (app / "up" / "archive" / "replaced").iterdir()] == ["a"]


def test_color_applies_a_profile_and_saves_as_the_output_extension(app: Path) -> None:
    image(app / "a.png", RED)
    result = kroma("color", "--input", "a.png", "--output", "c/a.jpg", "--profile", "cinematic_warm", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["results"] == [
        {"input": "a.png", "output": "c/a.jpg", "profile": "cinematic_warm", "settings": "builtin"}
    ]
    assert opened(app / "c" / "a.jpg").format == "JPEG"
    default = kroma("color", "--input", "a.png", "--output", "c/")
    assert default.stdout == "color-corrected a.png -> c/a.png (profile neutral)\n"
    assert opened(app / "c" / "a.png").format == "PNG"


def test_color_with_an_unknown_profile_fails_with_the_adapter_message(app: Path) -> None:
    image(app / "a.png", RED)
    result = kroma("color", "--input", "a.png", "--output", "c.png", "--profile", "sunset")
    assert result.exit_code == 1 and result.stderr == "Profile 'sunset' not found in builtin\n"
    assert not (app / "c.png").exists()


def test_bgremove_builtin_cuts_the_subject_out_into_a_transparent_png(app: Path) -> None:
    canvas = Image.new("RGB", (40, 40), (250, 250, 250))
    canvas.paste(RED, (12, 12, 28, 28))
    canvas.save(app / "a.png")
    result = kroma("bgremove", "--input", "a.png", "--output", "bg/a.png", "--bg-remove-backends", "builtin",
                   "--bg-refine-openai", "false", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["backends"] == ["builtin"] and answer["refine_openai"] is False and answer["format"] == "png"
    assert answer["results"] == [
        {"input": "a.png", "output": "bg/a.png", "backend": "builtin", "backends_tried": ["builtin"],
         "refine_openai": False, "refine_error": None}
    ]
    cut = opened(app / "bg" / "a.png")
    assert cut.mode == "RGBA" and cut.getpixel((0, 0))[3] == 0 and cut.getpixel((20, 20))[3] == 255


def test_bgremove_defaults_fall_back_to_builtin_and_record_the_refine_error_without_a_key(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(app))  # no rembg executable
    image(app / "a.png", RED)
    result = kroma("bgremove", "--input", "a.png", "--output", "a_nobg.webp", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["results"][0]
    assert record["backends_tried"] == ["rembg", "builtin"] and record["backend"] == "builtin"
    assert record["refine_openai"] is False
    assert record["refine_error"] == "Missing OPENAI_API_KEY for OpenAI background refinement"
    assert opened(app / "a_nobg.webp").format == "WEBP"


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("upscale", [], "upscale input does not exist: gone.png"),
        ("color", [], "color-correction input does not exist: gone.png"),
        ("bgremove", [], "background-remove input does not exist: gone.png"),
    ],
)
def test_pass_commands_report_a_missing_input(app: Path, command: str, extra: list[str], message: str) -> None:
    result = kroma(command, "--input", "gone.png", "--output", "o.png", *extra)
    assert result.exit_code == 1 and result.stderr == message + "\n"


def test_pass_commands_report_a_folder_without_images_and_an_unknown_backend(app: Path) -> None:
    (app / "empty").mkdir()
    assert kroma("color", "--input", "empty", "--output", "o").stderr == "No image files found for correction\n"
    image(app / "a.png", GRAY)
    bad = kroma("bgremove", "--input", "a.png", "--output", "o.png", "--bg-remove-backends", "magic")
    assert bad.exit_code == 1
    assert bad.stderr == "Unsupported background-remove backend(s): magic. Expected rembg|photoroom|removebg|builtin.\n"


def test_every_utility_command_is_registered_on_the_kroma_script() -> None:
    names = {"generate-one", "upscale", "color", "bgremove", "qa", "archive-bad", "validate-pipeline-config", "runs"}
    assert names <= set(main.commands)
