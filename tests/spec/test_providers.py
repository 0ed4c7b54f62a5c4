"""Provider configs: credential pairs, per-provider required fields, auth alternatives."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from servegate.spec import (
    Ai21LabsConfig,
    AmazonBedrockConfig,
    AnthropicConfig,
    BedrockProvider,
    CohereConfig,
    CredentialHolder,
    CustomProviderConfig,
    DatabricksModelServingConfig,
    GoogleCloudVertexAiConfig,
    OpenAIApiType,
    OpenAIConfig,
    PalmConfig,
    SecretRef,
    validation_errors,
)

CANARY = "sk-CANARY-123"
REF = "{{secrets/scope/key}}"


def issues(model: type[CredentialHolder], data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    assert CANARY not in str(info.value)
    return [(issue.field, issue.message) for issue in validation_errors(info.value)]


def the_issue(model: type[CredentialHolder], data: dict[str, Any]) -> tuple[str, str]:
    found = issues(model, data)
    assert len(found) == 1, found
    return found[0]


SIMPLE_PAIRS = [
    (OpenAIConfig, "openai_api_key", {}),
    (AnthropicConfig, "anthropic_api_key", {}),
    (CohereConfig, "cohere_api_key", {}),
    (Ai21LabsConfig, "ai21labs_api_key", {}),
    (PalmConfig, "palm_api_key", {}),
    (GoogleCloudVertexAiConfig, "private_key", {"project_id": "p", "region": "us-central1"}),
    (
        DatabricksModelServingConfig,
        "databricks_api_token",
        {"databricks_workspace_url": "https://example.cloud.databricks.com"},
    ),
]
PAIR_IDS = [model.__name__ for model, _, _ in SIMPLE_PAIRS]


@pytest.mark.parametrize(("model", "pair", "base"), SIMPLE_PAIRS, ids=PAIR_IDS)
def test_pair_accepts_reference_or_plaintext(
    model: type[CredentialHolder], pair: str, base: dict[str, Any]
) -> None:
    by_ref = model.model_validate({**base, pair: REF})
    assert [(c.field, c.ref, c.plaintext) for c in by_ref.credentials()] == [
        (pair, SecretRef("scope", "key"), None)
    ]
    by_value = model.model_validate({**base, f"{pair}_plaintext": CANARY})
    assert [(c.field, c.ref, c.plaintext) for c in by_value.credentials()] == [(pair, None, CANARY)]
    assert CANARY not in repr(by_value)
    assert CANARY not in str(by_value.model_dump())


@pytest.mark.parametrize(("model", "pair", "base"), SIMPLE_PAIRS, ids=PAIR_IDS)
def test_pair_requires_exactly_one(
    model: type[CredentialHolder], pair: str, base: dict[str, Any]
) -> None:
    message = f"exactly one of {pair} or {pair}_plaintext is required"
    assert the_issue(model, base) == ("", message)
    both = {**base, pair: REF, f"{pair}_plaintext": CANARY}
    field, text = the_issue(model, both)
    assert field == ""
    assert text.startswith(message)
    assert "both" in text


@pytest.mark.parametrize(("model", "pair", "base"), SIMPLE_PAIRS, ids=PAIR_IDS)
def test_reference_field_rejects_a_raw_value(
    model: type[CredentialHolder], pair: str, base: dict[str, Any]
) -> None:
    field, message = the_issue(model, {**base, pair: CANARY})
    assert field == pair
    assert "{{secrets/<scope>/<key>}}" in message


def test_empty_plaintext_is_rejected() -> None:
    assert the_issue(AnthropicConfig, {"anthropic_api_key_plaintext": ""}) == (
        "anthropic_api_key_plaintext",
        "must not be empty",
    )


def test_openai_defaults() -> None:
    config = OpenAIConfig.model_validate({"openai_api_key": REF})
    assert config.openai_api_type is OpenAIApiType.OPENAI
    assert config.openai_api_base == "https://api.openai.com/v1"
    custom = OpenAIConfig.model_validate(
        {"openai_api_key": REF, "openai_api_base": "http://127.0.0.1:8901/v1"}
    )
    assert custom.openai_api_base == "http://127.0.0.1:8901/v1"


AZURE = {
    "openai_api_type": "azure",
    "openai_api_key": REF,
    "openai_api_base": "https://res.openai.azure.com",
    "openai_api_version": "2024-06-01",
    "openai_deployment_name": "gpt4o",
}
AZUREAD = {
    **{k: v for k, v in AZURE.items() if k != "openai_api_key"},
    "openai_api_type": "azuread",
    "microsoft_entra_tenant_id": "tenant",
    "microsoft_entra_client_id": "client",
    "microsoft_entra_client_secret_plaintext": CANARY,
}


@pytest.mark.parametrize(
    ("data", "api_type"),
    [
        (AZURE, OpenAIApiType.AZURE),
        ({**AZURE, "openai_api_type": "AZURE"}, OpenAIApiType.AZURE),
        (AZUREAD, OpenAIApiType.AZUREAD),
        ({**AZUREAD, "openai_api_type": "AzureAD"}, OpenAIApiType.AZUREAD),
    ],
    ids=["azure", "azure-uppercase", "azuread", "azuread-mixed-case"],
)
def test_azure_accepted(data: dict[str, Any], api_type: OpenAIApiType) -> None:
    config = OpenAIConfig.model_validate(data)
    assert config.openai_api_type is api_type


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (
            {k: v for k, v in AZURE.items() if k != "openai_api_version"},
            "openai_api_type azure requires openai_api_version",
        ),
        (
            {k: v for k, v in AZURE.items() if k != "openai_api_base"},
            "openai_api_type azure requires openai_api_base",
        ),
        (
            {k: v for k, v in AZURE.items() if k != "openai_deployment_name"},
            "openai_api_type azure requires openai_deployment_name",
        ),
        (
            {k: v for k, v in AZURE.items() if k != "openai_api_key"},
            "exactly one of openai_api_key or openai_api_key_plaintext is required",
        ),
        (
            {k: v for k, v in AZUREAD.items() if k != "microsoft_entra_tenant_id"},
            "openai_api_type azuread requires microsoft_entra_tenant_id",
        ),
        (
            {k: v for k, v in AZUREAD.items() if k != "microsoft_entra_client_id"},
            "openai_api_type azuread requires microsoft_entra_client_id",
        ),
        (
            {k: v for k, v in AZUREAD.items() if k != "microsoft_entra_client_secret_plaintext"},
            "exactly one of microsoft_entra_client_secret or "
            "microsoft_entra_client_secret_plaintext is required",
        ),
        (
            {"openai_api_key": REF, "microsoft_entra_tenant_id": "t"},
            "only apply to openai_api_type azuread",
        ),
    ],
    ids=[
        "azure-no-version",
        "azure-no-base",
        "azure-no-deployment",
        "azure-no-key",
        "azuread-no-tenant",
        "azuread-no-client",
        "azuread-no-secret",
        "entra-fields-on-openai",
    ],
)
def test_azure_required_fields(data: dict[str, Any], phrase: str) -> None:
    field, message = the_issue(OpenAIConfig, data)
    assert field == ""
    assert phrase in message


def test_unknown_api_type_lists_values() -> None:
    field, message = the_issue(OpenAIConfig, {"openai_api_key": REF, "openai_api_type": "aws"})
    assert field == "openai_api_type"
    assert "'openai', 'azure' or 'azuread'" in message


def test_azuread_credentials() -> None:
    credentials = OpenAIConfig.model_validate(AZUREAD).credentials()
    assert [(c.field, c.plaintext) for c in credentials] == [
        ("microsoft_entra_client_secret", CANARY)
    ]


BEDROCK = {"aws_region": "us-east-1", "bedrock_provider": "anthropic"}


@pytest.mark.parametrize(
    ("auth", "fields"),
    [
        ({}, []),
        (
            {"aws_access_key_id": REF, "aws_secret_access_key_plaintext": CANARY},
            ["aws_access_key_id", "aws_secret_access_key"],
        ),
        (
            {"aws_access_key_id_plaintext": "AKIA", "aws_secret_access_key": REF},
            ["aws_access_key_id", "aws_secret_access_key"],
        ),
        ({"instance_profile_arn": "arn:aws:iam::1:instance-profile/x"}, []),
        ({"uc_service_credential_name": "bedrock-cred"}, []),
    ],
    ids=["default-chain", "keys-ref-plain", "keys-plain-ref", "instance-profile", "uc-credential"],
)
def test_bedrock_auth_alternatives(auth: dict[str, Any], fields: list[str]) -> None:
    config = AmazonBedrockConfig.model_validate({**BEDROCK, **auth})
    assert [c.field for c in config.credentials()] == fields


@pytest.mark.parametrize(
    ("auth", "phrase"),
    [
        (
            {"aws_access_key_id": REF},
            "exactly one of aws_secret_access_key or aws_secret_access_key_plaintext",
        ),
        (
            {"aws_secret_access_key_plaintext": CANARY},
            "exactly one of aws_access_key_id or aws_access_key_id_plaintext",
        ),
        (
            {
                "aws_access_key_id": REF,
                "aws_secret_access_key": REF,
                "instance_profile_arn": "arn",
            },
            "got access keys and instance_profile_arn",
        ),
        (
            {"instance_profile_arn": "arn", "uc_service_credential_name": "c"},
            "got instance_profile_arn and uc_service_credential_name",
        ),
    ],
    ids=["key-id-only", "secret-only", "keys-and-profile", "profile-and-uc"],
)
def test_bedrock_auth_conflicts(auth: dict[str, Any], phrase: str) -> None:
    field, message = the_issue(AmazonBedrockConfig, {**BEDROCK, **auth})
    assert field == ""
    assert phrase in message


def test_bedrock_provider_is_case_insensitive() -> None:
    config = AmazonBedrockConfig.model_validate({**BEDROCK, "bedrock_provider": "Amazon"})
    assert config.bedrock_provider is BedrockProvider.AMAZON
    assert config.model_dump(mode="json")["bedrock_provider"] == "amazon"
    field, message = the_issue(AmazonBedrockConfig, {**BEDROCK, "bedrock_provider": "meta"})
    assert field == "bedrock_provider"
    assert "'grok'" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"project_id": "p", "private_key": REF}, ("region", "Field required")),
        ({"region": "r", "private_key": REF}, ("project_id", "Field required")),
    ],
    ids=["no-region", "no-project"],
)
def test_vertex_required_fields(data: dict[str, Any], expected: tuple[str, str]) -> None:
    assert the_issue(GoogleCloudVertexAiConfig, data) == expected


@pytest.mark.parametrize(
    ("model", "field", "data"),
    [
        (
            DatabricksModelServingConfig,
            "databricks_workspace_url",
            {"databricks_workspace_url": "example.com", "databricks_api_token": REF},
        ),
        (
            CustomProviderConfig,
            "custom_provider_url",
            {"custom_provider_url": "ftp://x", "bearer_token_auth": {"token": REF}},
        ),
        (OpenAIConfig, "openai_api_base", {"openai_api_base": "localhost", "openai_api_key": REF}),
    ],
    ids=["databricks", "custom", "openai-base"],
)
def test_urls_must_be_http(model: type[CredentialHolder], field: str, data: dict[str, Any]) -> None:
    assert the_issue(model, data) == (field, "must be an http:// or https:// URL")


@pytest.mark.parametrize(
    ("auth", "fields"),
    [
        ({"api_key_auth": {"key": "X-Api-Key", "value": REF}}, ["api_key_auth.value"]),
        ({"api_key_auth": {"key": "X-Api-Key", "value_plaintext": CANARY}}, ["api_key_auth.value"]),
        ({"bearer_token_auth": {"token": REF}}, ["bearer_token_auth.token"]),
        ({"bearer_token_auth": {"token_plaintext": CANARY}}, ["bearer_token_auth.token"]),
    ],
    ids=["api-key-ref", "api-key-plain", "bearer-ref", "bearer-plain"],
)
def test_custom_provider_auth(auth: dict[str, Any], fields: list[str]) -> None:
    config = CustomProviderConfig.model_validate({"custom_provider_url": "http://h/v1", **auth})
    assert [c.field for c in config.credentials()] == fields


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({}, ("", "exactly one of api_key_auth or bearer_token_auth is required")),
        (
            {"api_key_auth": {"key": "k", "value": REF}, "bearer_token_auth": {"token": REF}},
            ("", "exactly one of api_key_auth or bearer_token_auth is required"),
        ),
        (
            {"api_key_auth": {"key": "k"}},
            ("api_key_auth", "exactly one of value or value_plaintext is required"),
        ),
        (
            {"bearer_token_auth": {"token": REF, "token_plaintext": CANARY}},
            ("bearer_token_auth", "exactly one of token or token_plaintext is required"),
        ),
        ({"api_key_auth": {"value": REF}}, ("api_key_auth.key", "Field required")),
    ],
    ids=["none", "both", "api-key-no-value", "bearer-both", "api-key-no-key"],
)
def test_custom_provider_auth_errors(auth: dict[str, Any], expected: tuple[str, str]) -> None:
    field, message = the_issue(CustomProviderConfig, {"custom_provider_url": "http://h", **auth})
    assert field == expected[0]
    assert message.startswith(expected[1])


def test_unknown_fields_are_kept_and_unknown_plaintext_hidden() -> None:
    config = AnthropicConfig.model_validate(
        {"anthropic_api_key": REF, "anthropic_version": "2023-06-01", "future_plaintext": CANARY}
    )
    assert config.model_extra is not None
    assert config.model_extra["anthropic_version"] == "2023-06-01"
    assert CANARY not in repr(config)
