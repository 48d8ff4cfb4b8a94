"""Configuration: defaults, environment overrides, errors an analyst can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_settings
from broker.errors import ConfigError


def test_every_key_has_a_default(tmp_path: Path) -> None:
    settings = load_settings(None, environ={})
    assert settings.store.startswith("sqlite:///")
    assert settings.mllp[0].port == 2575
    assert settings.dicom.port == 11112 and settings.dicom.ae_title == "BROKER"
    assert settings.http.port == 8080
    assert settings.destinations == {}


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "broker.yaml"
    path.parent.mkdir()
    path.write_text("store: sqlite:///data/b.db\nroutes: r/\n")
    settings = load_settings(path, environ={})
    assert settings.sqlite_path == (tmp_path / "conf" / "data" / "b.db").resolve()
    assert settings.routes_dir == (tmp_path / "conf" / "r").resolve()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text("http: {port: 8080}\n")
    settings = load_settings(
        path, environ={"BROKER__HTTP__PORT": "9999", "BROKER__DICOM__AE_TITLE": "MWL"}
    )
    assert settings.http.port == 9999
    assert settings.dicom.ae_title == "MWL"


def test_errors_name_file_line_key_value_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(
        "store: sqlite:///b.db\n"
        "mllp:\n"
        "  - name: ris\n"
        "    port: twenty\n"
        "dicom:\n"
        "  ae_title: THIS_TITLE_IS_TOO_LONG\n"
        "colour: blue\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    text = str(info.value)
    assert f"{path}:4: mllp[0].port: found 'twenty'" in text
    assert "integer" in text
    assert f"{path}:6: dicom.ae_title" in text and "16 characters" in text
    assert f"{path}:7: colour" in text


def test_store_url_and_tls_rules(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(
        "store: mysql://x\nmllp: [{name: a, tls: {cert: c.pem, key: k.pem, verify_client: true}}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert "expected sqlite:///PATH, redis://HOST:PORT/DB or redis+sentinel://" in str(info.value)
    assert "verify_client: true needs ca:" in str(info.value)


def test_configuration_reference_is_current() -> None:
    from broker.config import settings_reference

    committed = (Path(__file__).parent.parent / "docs" / "CONFIGURATION.md").read_text()
    assert committed == settings_reference(), "run: python -m broker.config > docs/CONFIGURATION.md"


def test_errors_never_repeat_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text("mllp: [{name: ris, tls: {cert: c.pem, key: k.pem, password: hunter2}}]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert f"{path}:1: mllp[0].tls.password: found a value (not shown" in str(info.value)
    assert "hunter2" not in str(info.value)
