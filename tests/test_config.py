"""Settings precedence: defaults < TOML file < KROMA_* environment < CLI flags."""

from __future__ import annotations

from pathlib import Path

from kroma.config import load_settings


def write_toml(tmp_path: Path) -> str:
    path = tmp_path / "kroma.toml"
    path.write_text(
        '[server]\nbind = "127.0.0.1:9000"\n[storage]\ndata_dir = "from-file"\n[auth]\ndev_bypass = true\n'
    )
    return str(path)


def test_defaults_apply_without_file_or_environment(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    settings = load_settings(environ={}, config_file=str(empty))
    assert settings.bind == "127.0.0.1:8788" and settings.data_dir == "var/kroma"
    assert settings.auth_dev_bypass is False and settings.auth_bootstrap_first_token is True


def test_file_then_environment_then_flags_override_in_order(tmp_path: Path) -> None:
    path = write_toml(tmp_path)
    assert load_settings(environ={}, config_file=path).bind == "127.0.0.1:9000"
    env = {"KROMA_BIND": "127.0.0.1:9100", "KROMA_DATA_DIR": "from-env", "KROMA_API_AUTH_DEV_BYPASS": "off"}
    from_env = load_settings(environ=env, config_file=path)
    assert (from_env.bind, from_env.data_dir, from_env.auth_dev_bypass) == (
        "127.0.0.1:9100",
        "from-env",
        False,
    )
    flagged = load_settings(environ=env, config_file=path, bind="127.0.0.1:9200", data_dir=None)
    assert (flagged.bind, flagged.data_dir) == ("127.0.0.1:9200", "from-env")


def test_reference_bind_variable_is_accepted_and_kroma_name_wins(tmp_path: Path) -> None:
    path = write_toml(tmp_path)
    assert (
        load_settings(environ={"KROMA_BACKEND_BIND": "127.0.0.1:7000"}, config_file=path).bind
        == "127.0.0.1:7000"
    )
    both = {"KROMA_BACKEND_BIND": "127.0.0.1:7000", "KROMA_BIND": "127.0.0.1:7001"}
    assert load_settings(environ=both, config_file=path).bind == "127.0.0.1:7001"


def test_boolean_flags_accept_the_reference_truthy_words(tmp_path: Path) -> None:
    path = write_toml(tmp_path)
    for word, expected in (("1", True), ("YES", True), (" on ", True), ("nope", False)):
        env = {"KROMA_API_AUTH_BOOTSTRAP_FIRST_TOKEN": word}
        assert load_settings(environ=env, config_file=path).auth_bootstrap_first_token is expected
