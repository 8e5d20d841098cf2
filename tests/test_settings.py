"""Start-up configuration: wrong values stop start-up with one clear line per variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from config import Settings, config_errors
from engine.providers import PROVIDERS

ROOT = Path(__file__).resolve().parent.parent


def errors(**values: object) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **values)  # type: ignore[call-arg]
    return config_errors(caught.value)


def test_defaults_pick_the_local_engine_without_credentials() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.mfa_provider == "local" and settings.port == 3000 and settings.agent_id == "mfa"


def test_a_provider_is_one_the_registry_has(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "agent.py"), "--check"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "MFA_PROVIDER": "Twilio"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"configuration error: MFA_PROVIDER: must be one of {', '.join(sorted(PROVIDERS))}"
    )
    assert Settings(_env_file=None, mfa_provider=" LOCAL ").mfa_provider == "local"  # type: ignore[call-arg]


def test_credentials_pick_signalwire_and_loopback_spaces_use_http() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, signalwire_project_id="p", signalwire_api_token="t", signalwire_space="127.0.0.1:8099"
    )
    assert settings.mfa_provider == "signalwire"
    assert settings.signalwire_base_url == "http://127.0.0.1:8099"


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"mfa_token_length": 3}, "MFA_TOKEN_LENGTH"),
        ({"mfa_valid_for": 700_000}, "MFA_VALID_FOR"),
        ({"mfa_max_attempts": 21}, "MFA_MAX_ATTEMPTS"),
        ({"mfa_destinations": "everyone"}, "MFA_DESTINATIONS"),
        ({"mfa_allowed_countries": "US,XX"}, "MFA_ALLOWED_COUNTRIES"),
        ({"mfa_store": "postgres://db"}, "MFA_STORE"),
        ({"mfa_from_number": "555-0100"}, "MFA_FROM_NUMBER"),
        ({"mfa_provider": "signalwire"}, "SIGNALWIRE_PROJECT_ID"),
        ({"mfa_message": "x" * 150, "mfa_workflow_token_length": 12}, "MFA_MESSAGE"),
        ({"mfa_webhook_urls": "https://hooks.example.com/mfa"}, "MFA_WEBHOOK_SECRET"),
        ({"swml_proxy_url_base": "agent.example.com"}, "SWML_PROXY_URL_BASE"),
        ({"swml_proxy_url_base": "https://agent.example.com/?x=1"}, "SWML_PROXY_URL_BASE"),
    ],
)
def test_each_wrong_value_is_named(values: dict[str, object], names: str) -> None:
    lines = errors(**values)
    assert len(lines) == 1 and names in lines[0], lines


def test_a_wrong_value_stops_the_agent_with_one_line_and_no_secret(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MFA_TOKEN_LENGTH": "99", "SIGNALWIRE_API_TOKEN": "PT-top-secret-value"}
    command = [sys.executable, str(ROOT / "agent.py")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: MFA_TOKEN_LENGTH: "), lines
    assert "PT-top-secret-value" not in result.stdout + result.stderr


def test_the_public_url_is_kept_without_its_last_slash() -> None:
    settings = Settings(_env_file=None, swml_proxy_url_base="https://agent.example.com/mfa/ ")  # type: ignore[call-arg]
    assert settings.swml_proxy_url_base == "https://agent.example.com/mfa"
    assert Settings(_env_file=None, swml_proxy_url_base="").swml_proxy_url_base is None  # type: ignore[call-arg]
