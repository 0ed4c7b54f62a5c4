"""Provider configs of an external model (`<provider>_config`), one model per provider.

Field names and meanings follow the Databricks `ExternalModel` API verbatim, so a create
body written for Databricks validates here unchanged.

Unknown fields are *kept* (`extra="allow"`) on every spec model: the platform tolerates
them, and GET echoes the configuration, so a field this version does not know about
survives a round trip instead of silently disappearing. For the generated CRD schema this
means `x-kubernetes-preserve-unknown-fields: true` on each object, which the generator
derives from `additionalProperties: true`. Unknown keys ending in `_plaintext` are wrapped
in `SecretStr` so they are as invisible in logs as the known plaintext fields.

Credentials come in pairs: `X` (a `{{secrets/<scope>/<key>}}` reference) and
`X_plaintext` (`SecretStr`, hidden from repr and logs). `credential_pair` is the one place
that checks a pair and turns it into a `Credential`; each config only declares its pairs
(`credential_pairs`) and which of them are required in its current shape.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from servegate.spec.secrets import (
    PLAINTEXT_SUFFIX,
    SECRET_REF_SYNTAX,
    Credential,
    parse_secret_ref,
)


class SpecError(ValueError):
    """A validation failure that belongs to a field *below* the model that detected it.

    Cross-field rules run in model validators, whose errors pydantic locates at the model
    itself; `loc` carries the rest of the path (e.g. `("traffic_config", "routes", 1)`)
    and `manifest.validation_errors` appends it, so messages name the deepest field.
    """

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


class SpecModel(BaseModel):
    """Base of every spec model: tolerant of unknown fields, never echoes input in errors.

    `hide_input_in_errors` matters because a model-level error's input is the whole
    mapping, plaintext credentials included, and `str(ValidationError)` would print it.
    """

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    @model_validator(mode="after")
    def _hide_unknown_plaintext(self) -> Self:
        if self.__pydantic_extra__:
            self.__pydantic_extra__ = _hide_plaintext(self.__pydantic_extra__)
        return self


def _hide_plaintext(value: Any) -> Any:
    """Wrap every string under a `*_plaintext` key, at any depth, in `SecretStr`."""
    if isinstance(value, dict):
        return {
            key: SecretStr(item)
            if isinstance(key, str) and key.endswith(PLAINTEXT_SUFFIX) and isinstance(item, str)
            else _hide_plaintext(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_hide_plaintext(item) for item in value]
    return value


def _check_secret_ref(value: str) -> str:
    if parse_secret_ref(value) is None:
        # Never echo the value: a raw API key pasted here is exactly the mistake to catch.
        raise ValueError(
            f"must be a secret reference of the form {SECRET_REF_SYNTAX} "
            "(letters, digits, '_', '.', '-'; no spaces); "
            "put a literal value in the matching _plaintext field instead"
        )
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


SecretReference = Annotated[str, AfterValidator(_check_secret_ref)]
"""A `{{secrets/<scope>/<key>}}` string, kept verbatim (GET echoes it as configured)."""

HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
"""An http(s) URL kept as written (pydantic's HttpUrl would add a trailing slash)."""


def _check_not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


Plaintext = Annotated[SecretStr, AfterValidator(_check_not_empty)]
"""A literal credential; `SecretStr` keeps it out of repr, logs and `model_dump` output."""


def credential_pair(
    model: BaseModel, name: str, *, required: bool, prefix: str = ""
) -> Credential | None:
    """Check the pair `name` / `name_plaintext` on `model` and return it as a Credential.

    At most one of the two may be set; with `required`, exactly one. The error names
    both fields so the user can see the choice they have.
    """
    ref: str | None = getattr(model, name)
    plain: SecretStr | None = getattr(model, name + PLAINTEXT_SUFFIX)
    both = f"{name} or {name}{PLAINTEXT_SUFFIX}"
    if ref is not None and plain is not None:
        raise SpecError(f"exactly one of {both} is required, but both are set")
    field = prefix + name
    if ref is not None:
        return Credential(field, ref=parse_secret_ref(ref))
    if plain is not None:
        return Credential(field, plaintext=plain.get_secret_value())
    if required:
        raise SpecError(f"exactly one of {both} is required")
    return None


class CredentialHolder(SpecModel):
    """A model that holds credential pairs, directly or in nested holders."""

    credential_pairs: ClassVar[tuple[str, ...]] = ()

    def required_pairs(self) -> tuple[str, ...]:
        """The pairs that must be set in this model's current shape (default: all)."""
        return self.credential_pairs

    @model_validator(mode="after")
    def _check_credential_pairs(self) -> Self:
        required = self.required_pairs()
        for name in self.credential_pairs:
            credential_pair(self, name, required=name in required)
        return self

    def credentials(self, prefix: str = "") -> list[Credential]:
        """Every credential this model holds, with dotted field names."""
        found: list[Credential] = []
        for name in self.credential_pairs:
            credential = credential_pair(self, name, required=False, prefix=prefix)
            if credential is not None:
                found.append(credential)
        for field in type(self).model_fields:
            value = getattr(self, field)
            if isinstance(value, CredentialHolder):
                found.extend(value.credentials(prefix=f"{prefix}{field}."))
        return found


class ProviderConfig(CredentialHolder):
    """Base of the `<provider>_config` models."""


class OpenAIApiType(StrEnum):
    OPENAI = "openai"
    AZURE = "azure"
    AZUREAD = "azuread"


class BedrockProvider(StrEnum):
    ANTHROPIC = "anthropic"
    COHERE = "cohere"
    AI21LABS = "ai21labs"
    AMAZON = "amazon"
    GROK = "grok"


def _lowercase(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _missing(model: BaseModel, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if getattr(model, name) is None]


_AZURE_FIELDS = ("openai_api_base", "openai_api_version", "openai_deployment_name")
_ENTRA_FIELDS = ("microsoft_entra_tenant_id", "microsoft_entra_client_id")
OPENAI_DEFAULT_API_BASE = "https://api.openai.com/v1"


class OpenAIConfig(ProviderConfig):
    """OpenAI, Azure OpenAI with a key (`azure`), or Azure OpenAI with Entra ID (`azuread`)."""

    credential_pairs = ("openai_api_key", "microsoft_entra_client_secret")

    openai_api_type: OpenAIApiType = Field(
        default=OpenAIApiType.OPENAI,
        description="openai (default), azure (key auth) or azuread (Microsoft Entra ID); case-insensitive.",
    )
    openai_api_key: SecretReference | None = None
    openai_api_key_plaintext: Plaintext | None = None
    openai_api_base: HttpUrl | None = Field(
        default=None,
        description=f"Base URL of the API; defaults to {OPENAI_DEFAULT_API_BASE} for openai, required for Azure.",
    )
    openai_api_version: str | None = Field(
        default=None, description="Azure API version (a date string); required for Azure."
    )
    openai_deployment_name: str | None = Field(
        default=None, description="Azure deployment name; required for Azure."
    )
    openai_organization: str | None = None
    microsoft_entra_tenant_id: str | None = Field(default=None, description="azuread only.")
    microsoft_entra_client_id: str | None = Field(default=None, description="azuread only.")
    microsoft_entra_client_secret: SecretReference | None = Field(
        default=None, description="azuread only."
    )
    microsoft_entra_client_secret_plaintext: Plaintext | None = Field(
        default=None, description="azuread only."
    )

    _lower_type = field_validator("openai_api_type", mode="before")(_lowercase)

    def required_pairs(self) -> tuple[str, ...]:
        if self.openai_api_type is OpenAIApiType.AZUREAD:
            return ("microsoft_entra_client_secret",)
        return ("openai_api_key",)

    @model_validator(mode="after")
    def _check_api_type(self) -> Self:
        kind = self.openai_api_type
        entra_given = [name for name in _ENTRA_FIELDS if getattr(self, name) is not None]
        secret = "microsoft_entra_client_secret"
        if credential_pair(self, secret, required=False) is not None:
            entra_given.append(secret)
        if kind is not OpenAIApiType.AZUREAD and entra_given:
            raise SpecError(
                f"{', '.join(entra_given)} only apply to openai_api_type azuread, "
                f"but openai_api_type is {kind}"
            )
        if kind is OpenAIApiType.OPENAI:
            if self.openai_api_base is None:
                self.openai_api_base = OPENAI_DEFAULT_API_BASE
            return self
        required = _AZURE_FIELDS + (_ENTRA_FIELDS if kind is OpenAIApiType.AZUREAD else ())
        missing = _missing(self, required)
        if missing:
            raise SpecError(f"openai_api_type {kind} requires {', '.join(missing)}")
        return self


class AnthropicConfig(ProviderConfig):
    credential_pairs = ("anthropic_api_key",)

    anthropic_api_key: SecretReference | None = None
    anthropic_api_key_plaintext: Plaintext | None = None
    anthropic_api_base: HttpUrl | None = Field(
        default=None,
        description="servegate extension: base URL instead of https://api.anthropic.com (a proxy, a private endpoint, a simulator).",
    )


class CohereConfig(ProviderConfig):
    credential_pairs = ("cohere_api_key",)

    cohere_api_key: SecretReference | None = None
    cohere_api_key_plaintext: Plaintext | None = None
    cohere_api_base: HttpUrl | None = Field(default=None, description="Custom Cohere base URL.")


class AmazonBedrockConfig(ProviderConfig):
    """Bedrock; auth is access keys, an instance profile, a UC service credential, or
    nothing at all (the AWS default credential chain of the gateway's environment)."""

    credential_pairs = ("aws_access_key_id", "aws_secret_access_key")

    aws_region: str
    bedrock_provider: BedrockProvider = Field(
        description="Model family behind Bedrock; case-insensitive input, stored lowercase."
    )
    aws_access_key_id: SecretReference | None = None
    aws_access_key_id_plaintext: Plaintext | None = None
    aws_secret_access_key: SecretReference | None = None
    aws_secret_access_key_plaintext: Plaintext | None = None
    instance_profile_arn: str | None = Field(
        default=None, description="Role to assume instead of access keys."
    )
    uc_service_credential_name: str | None = Field(
        default=None, description="Named service credential instead of access keys."
    )
    bedrock_endpoint_url: HttpUrl | None = Field(
        default=None,
        description="servegate extension: base URL instead of https://bedrock-runtime.<aws_region>.amazonaws.com (a proxy, a private endpoint, a simulator).",
    )

    _lower_provider = field_validator("bedrock_provider", mode="before")(_lowercase)

    def _uses_access_keys(self) -> bool:
        return any(
            getattr(self, name + suffix) is not None
            for name in self.credential_pairs
            for suffix in ("", PLAINTEXT_SUFFIX)
        )

    def required_pairs(self) -> tuple[str, ...]:
        # Either key half alone is useless: once one is given, both are required.
        return self.credential_pairs if self._uses_access_keys() else ()

    @model_validator(mode="after")
    def _one_auth_style(self) -> Self:
        styles = [
            style
            for style, used in (
                ("access keys", self._uses_access_keys()),
                ("instance_profile_arn", self.instance_profile_arn is not None),
                ("uc_service_credential_name", self.uc_service_credential_name is not None),
            )
            if used
        ]
        if len(styles) > 1:
            raise SpecError(
                "at most one AWS auth style may be used (access keys, instance_profile_arn "
                f"or uc_service_credential_name), got {' and '.join(styles)}"
            )
        return self


class GoogleCloudVertexAiConfig(ProviderConfig):
    credential_pairs = ("private_key",)

    project_id: str
    region: str
    private_key: SecretReference | None = Field(
        default=None,
        description="Reference to the service account key (the JSON key file Google issues).",
    )
    private_key_plaintext: Plaintext | None = None
    vertex_api_base: HttpUrl | None = Field(
        default=None,
        description="servegate extension: base URL instead of https://<region>-aiplatform.googleapis.com (a proxy, a private endpoint, a simulator).",
    )


class Ai21LabsConfig(ProviderConfig):
    credential_pairs = ("ai21labs_api_key",)

    ai21labs_api_key: SecretReference | None = None
    ai21labs_api_key_plaintext: Plaintext | None = None
    ai21labs_api_base: HttpUrl | None = Field(
        default=None,
        description="servegate extension: base URL instead of https://api.ai21.com (a proxy, a private endpoint, a simulator).",
    )


class DatabricksModelServingConfig(ProviderConfig):
    credential_pairs = ("databricks_api_token",)

    databricks_workspace_url: HttpUrl
    databricks_api_token: SecretReference | None = Field(
        default=None, description="Token with CAN_QUERY on the target endpoint."
    )
    databricks_api_token_plaintext: Plaintext | None = None


class ApiKeyAuth(CredentialHolder):
    credential_pairs = ("value",)

    key: str = Field(description="Name of the header carrying the key.")
    value: SecretReference | None = None
    value_plaintext: Plaintext | None = None


class BearerTokenAuth(CredentialHolder):
    credential_pairs = ("token",)

    token: SecretReference | None = None
    token_plaintext: Plaintext | None = None


class CustomProviderConfig(ProviderConfig):
    """Any server speaking the OpenAI-style request/response format."""

    custom_provider_url: HttpUrl
    api_key_auth: ApiKeyAuth | None = None
    bearer_token_auth: BearerTokenAuth | None = None

    @model_validator(mode="after")
    def _one_auth(self) -> Self:
        if (self.api_key_auth is None) == (self.bearer_token_auth is None):
            raise SpecError("exactly one of api_key_auth or bearer_token_auth is required")
        return self


class PalmConfig(ProviderConfig):
    credential_pairs = ("palm_api_key",)

    palm_api_key: SecretReference | None = None
    palm_api_key_plaintext: Plaintext | None = None
