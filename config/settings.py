"""Typed settings, read once from the environment (and a `.env` file) at start-up.

Every other module receives a `Settings`; none reads the environment itself.
A wrong value stops start-up with one line per variable (see `config_errors`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import phonenumbers
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.sms import fits_one_segment

# What an agent id may be, wherever one is given (AGENT_ID, ?agent_id=, an include's meta_data).
AGENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
AGENT_ID = re.compile(AGENT_ID_PATTERN)
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
SIP_URI = re.compile(r"^sips?:[A-Za-z0-9_.!~*'()&=+$,;?/%-]+@[A-Za-z0-9.-]+(:\d{1,5})?$")
HTTPS_URL = re.compile(r"^https://[^\s/]+(/\S*)?$")

# Limits of SignalWire's MFA API; the local engine keeps them too.
TOKEN_LENGTH = (4, 20)
VALID_FOR_MAX = 604_800
MAX_ATTEMPTS = (1, 20)


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the deployer can configure (the README's configuration table)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    port: int = Field(3000, ge=1, le=65535)
    host: str = "0.0.0.0"
    swml_basic_auth_user: str | None = None
    swml_basic_auth_password: SecretStr | None = None

    signalwire_project_id: str | None = None
    signalwire_api_token: SecretStr | None = None
    signalwire_space: str | None = None

    # A name in the provider registry (engine.providers.PROVIDERS), checked when the agent
    # starts, so a new provider needs no change here. Unset: signalwire with credentials.
    mfa_provider: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    mfa_delivery: Literal["outbox", "signalwire"] = "outbox"
    mfa_from_number: str | None = None
    mfa_token_length: int = Field(6, ge=TOKEN_LENGTH[0], le=TOKEN_LENGTH[1])
    mfa_valid_for: int = Field(600, ge=1, le=VALID_FOR_MAX)
    mfa_max_attempts: int = Field(3, ge=MAX_ATTEMPTS[0], le=MAX_ATTEMPTS[1])
    mfa_allow_alphas: bool = False
    # Unset: the message of MFA_LANGUAGE ("Your verification code is" in en-US).
    mfa_message: str | None = Field(None, min_length=1, max_length=160)
    mfa_language: Literal["en-US", "es-US", "fr-FR"] = "en-US"
    mfa_transfer_to: str | None = None
    mfa_on_verified: str | None = None

    mfa_destinations: Literal["caller", "any"] = "caller"
    # on/off; unset: on when the SignalWire credentials are set (the lookup needs them).
    mfa_line_type_check: bool | None = None
    mfa_allowed_countries: Annotated[list[str], NoDecode] = []

    mfa_store: str = "sqlite:///./data/mfa.sqlite3"
    mfa_outbox: Path = Path("./data/outbox.jsonl")

    mfa_sends_per_number_per_hour: int = Field(5, ge=1)
    mfa_sends_per_call: int = Field(3, ge=1)
    mfa_max_failures_per_call: int = Field(5, ge=1)
    mfa_sends_per_agent_per_minute: int = Field(600, ge=1)
    mfa_sends_per_minute: int = Field(600, ge=1)
    mfa_max_failures_per_number_per_day: int = Field(10, ge=1, le=100)

    mfa_workflow_window: int = Field(90, ge=1, le=VALID_FOR_MAX)
    mfa_workflow_token_length: int = Field(4, ge=TOKEN_LENGTH[0], le=TOKEN_LENGTH[1])
    mfa_workflow_tries: int = Field(4, ge=MAX_ATTEMPTS[0], le=MAX_ATTEMPTS[1])

    signalwire_swaig_secret: SecretStr | None = Field(None, min_length=16)
    mfa_code_key: SecretStr | None = Field(None, min_length=16)
    agent_id: str = Field("mfa", pattern=AGENT_ID_PATTERN)
    mfa_webhook_urls: Annotated[list[str], NoDecode] = []
    mfa_webhook_secret: SecretStr | None = None
    # SignalWire's Signing Key (dashboard, API credentials): checks its delivery status callbacks.
    signalwire_signing_key: SecretStr | None = None
    # The SDK's own variable: the agent's public base URL. The SDK builds its function URLs
    # from it; the agent builds the delivery status callback URL it gives SignalWire from it.
    swml_proxy_url_base: str | None = None

    # Insight: how long history stays, delivery follow-up, and the SMS pumping guard.
    mfa_history_days: int = Field(30, ge=1, le=400)
    mfa_fallback_to_call: bool = True
    mfa_fraud_guard: bool = True
    mfa_fraud_min_sends: int = Field(20, ge=1, le=100_000)
    mfa_fraud_min_conversion: float = Field(0.2, ge=0.0, le=1.0)
    # Prefixes (+44 7700) and ISO regions (GB) the guard never holds, and those it always refuses.
    mfa_fraud_allow: Annotated[list[str], NoDecode] = []
    mfa_fraud_block: Annotated[list[str], NoDecode] = []
    # Sends per hour a country with no approved verification yet may have; each approval adds more.
    mfa_fraud_new_country_sends: int = Field(10, ge=0, le=100_000)

    # Operational knobs with safe defaults.
    mfa_upstream_timeout: float = Field(8.0, gt=0, le=9.0)
    mfa_max_body_bytes: int = Field(1_048_576, ge=16_384, le=64 * 1_048_576)
    # Seconds a connection may take to send a request's head; then it is closed.
    mfa_header_timeout: float = Field(10.0, gt=0, le=120.0)
    # Connections one client address may hold open at once (0: no limit, e.g. behind a proxy).
    mfa_max_connections_per_client: int = Field(256, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("mfa_provider", mode="before")
    @classmethod
    def _provider_name(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()

    @field_validator(
        "mfa_allowed_countries", "mfa_webhook_urls", "mfa_fraud_allow", "mfa_fraud_block", mode="before"
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("mfa_allowed_countries")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        known = phonenumbers.SUPPORTED_REGIONS
        regions = [region.upper() for region in value]
        unknown = [region for region in regions if region not in known]
        if unknown:
            raise ValueError(f"unknown ISO region(s) {', '.join(unknown)}; use codes like US,CA,GB")
        return regions

    @field_validator("mfa_fraud_allow", "mfa_fraud_block")
    @classmethod
    def _destinations(cls, value: list[str]) -> list[str]:
        known = phonenumbers.SUPPORTED_REGIONS
        entries = []
        for entry in value:
            compact = re.sub(r"[\s().-]", "", entry)
            if compact.upper() in known:
                entries.append(compact.upper())
            elif re.fullmatch(r"\+[1-9]\d{0,14}", compact):
                entries.append(compact)
            else:
                raise ValueError(
                    f"{entry!r} is neither a number prefix such as +447700 nor an ISO region such as GB"
                )
        return entries

    @field_validator("mfa_webhook_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^https?://[^\s/]+", url):
                raise ValueError("each entry must be an http:// or https:// URL")
        return value

    @field_validator("mfa_transfer_to")
    @classmethod
    def _person(cls, value: str | None) -> str | None:
        if value is not None and not (E164.match(value) or SIP_URI.match(value)):
            raise ValueError(
                "must be an E.164 number such as +15551234567 or a SIP URI such as sip:desk@example.com"
            )
        return value

    @field_validator("mfa_on_verified")
    @classmethod
    def _next_agent(cls, value: str | None) -> str | None:
        if value is not None and not (E164.match(value) or SIP_URI.match(value) or HTTPS_URL.match(value)):
            raise ValueError(
                "must be an https:// SWML URL, an E.164 number such as +15551234567 or a SIP URI such as "
                "sip:desk@example.com"
            )
        return value

    @field_validator("mfa_language", mode="before")
    @classmethod
    def _language(cls, value: object) -> object:
        # "es-us", "ES_US": the tag as people write it.
        if isinstance(value, str):
            language, _, region = value.strip().replace("_", "-").partition("-")
            return f"{language.lower()}-{region.upper()}" if region else language.lower()
        return value

    @field_validator("swml_proxy_url_base")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be the agent's public base URL, such as https://agent.example.com")
        return value

    @field_validator("mfa_from_number")
    @classmethod
    def _from_number(cls, value: str | None) -> str | None:
        if value is not None and not E164.match(value):
            raise ValueError("must be an E.164 number such as +15551234567")
        return value

    @field_validator("signalwire_space")
    @classmethod
    def _space(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        if not re.match(r"^[A-Za-z0-9.-]+(:\d{1,5})?$", value):
            raise ValueError("must be a host such as example.signalwire.com")
        return value

    @field_validator("mfa_store")
    @classmethod
    def _store(cls, value: str) -> str:
        if not (value.startswith("sqlite:///") or re.match(r"^rediss?://", value)):
            raise ValueError("must be sqlite:///path or redis://host:port/db")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.mfa_provider is None:
            self.mfa_provider = "signalwire" if self.has_signalwire_credentials else "local"
        if self.mfa_line_type_check is None:
            self.mfa_line_type_check = self.has_signalwire_credentials
        elif self.mfa_line_type_check and not self.has_signalwire_credentials:
            raise ValueError(
                "MFA_LINE_TYPE_CHECK=on needs SIGNALWIRE_PROJECT_ID, SIGNALWIRE_API_TOKEN "
                "and SIGNALWIRE_SPACE"
            )
        uses_rest = self.mfa_provider == "signalwire" or self.mfa_delivery == "signalwire"
        if uses_rest and not self.has_signalwire_credentials:
            raise ValueError(
                "MFA_PROVIDER=signalwire or MFA_DELIVERY=signalwire needs "
                "SIGNALWIRE_PROJECT_ID, SIGNALWIRE_API_TOKEN and SIGNALWIRE_SPACE"
            )
        if self.mfa_provider == "local" and self.mfa_delivery == "signalwire" and not self.mfa_from_number:
            raise ValueError("MFA_DELIVERY=signalwire needs MFA_FROM_NUMBER (the sender of the SMS)")
        if self.mfa_webhook_urls and self.mfa_webhook_secret is None:
            # An unsigned event is one any caller of the receiver's URL could forge.
            raise ValueError("MFA_WEBHOOK_URLS needs MFA_WEBHOOK_SECRET (the key that signs each event)")
        longest_code = max(self.mfa_token_length, self.mfa_workflow_token_length)
        # The text as the SMS carries it: the message, a space, the code (engine.codes.Message.text).
        if self.mfa_message is not None and not fits_one_segment(f"{self.mfa_message} {'0' * longest_code}"):
            raise ValueError(
                "MFA_MESSAGE with the code must fit one SMS segment "
                "(160 GSM-7 characters, or 70 with any other character)"
            )
        return self

    @property
    def has_signalwire_credentials(self) -> bool:
        return bool(self.signalwire_project_id and self.signalwire_api_token and self.signalwire_space)

    @property
    def signalwire_base_url(self) -> str:
        """The REST base URL; a loopback host with a port is spoken to over plain http."""
        space = self.signalwire_space or ""
        loopback = re.match(r"^(127\.\d+\.\d+\.\d+|localhost|\[::1\]):\d+$", space)
        return f"{'http' if loopback else 'https'}://{space}"


def config_errors(error: ValidationError) -> list[str]:
    """One line per wrong variable, naming it and what is allowed, never echoing a secret."""
    lines = []
    for problem in error.errors():
        location = "_".join(str(part) for part in problem["loc"]).upper()
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{location}: {message}" if location else message)
    return lines
