"""The ``ai_gateway`` block (and the legacy top-level ``rate_limits``): governance settings.

Field names and enums are the platform's (``databricks-api.md`` §1.6). The gateway validates
and echoes them; each setting is enforced by the stage that owns it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from servegate.spec.providers import SpecError, SpecModel


class UsageTrackingConfig(SpecModel):
    enabled: bool = False


class InferenceTableConfig(SpecModel):
    enabled: bool = False
    catalog_name: str | None = None
    schema_name: str | None = None
    table_name_prefix: str | None = Field(
        default=None, description="Defaults to the endpoint name."
    )

    @model_validator(mode="after")
    def _target_when_enabled(self) -> Self:
        missing = [n for n in ("catalog_name", "schema_name") if getattr(self, n) is None]
        if self.enabled and missing:
            raise SpecError(f"an enabled inference table requires {' and '.join(missing)}")
        return self


NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]


class RateLimitKey(StrEnum):
    ENDPOINT = "endpoint"
    USER = "user"
    USER_GROUP = "user_group"
    SERVICE_PRINCIPAL = "service_principal"


class AiGatewayRateLimit(SpecModel):
    calls: NonNegativeInt | None = Field(default=None, description="Queries per renewal period.")
    tokens: NonNegativeInt | None = Field(default=None, description="Tokens per renewal period.")
    key: RateLimitKey = RateLimitKey.ENDPOINT
    principal: str | None = Field(
        default=None,
        description="User email, group name or service principal application id; "
        "without it a user/user_group/service_principal limit applies to each one.",
    )
    renewal_period: Literal["minute"]

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.calls is None and self.tokens is None:
            raise SpecError("a rate limit needs calls, tokens or both")
        if self.principal is not None and self.key is RateLimitKey.ENDPOINT:
            raise SpecError(
                "principal only applies to key user, user_group or service_principal",
                loc=("principal",),
            )
        return self


class PiiBehavior(StrEnum):
    NONE = "NONE"
    BLOCK = "BLOCK"
    MASK = "MASK"


class GuardrailPiiBehavior(SpecModel):
    behavior: PiiBehavior | None = Field(default=None, description="Omitted means NONE.")


class GuardrailParameters(SpecModel):
    safety: bool | None = None
    pii: GuardrailPiiBehavior | None = None
    invalid_keywords: list[str] | None = None
    valid_topics: list[str] | None = None


class AiGatewayGuardrails(SpecModel):
    input: GuardrailParameters | None = None
    output: GuardrailParameters | None = None


class FallbackConfig(SpecModel):
    enabled: bool


class AiGatewayConfig(SpecModel):
    usage_tracking_config: UsageTrackingConfig | None = None
    inference_table_config: InferenceTableConfig | None = None
    rate_limits: list[AiGatewayRateLimit] | None = None
    guardrails: AiGatewayGuardrails | None = None
    fallback_config: FallbackConfig | None = None


class LegacyRateLimitKey(StrEnum):
    USER = "user"
    ENDPOINT = "endpoint"


class RateLimit(SpecModel):
    """Deprecated top-level rate limit; `ai_gateway.rate_limits` supersedes it."""

    calls: NonNegativeInt
    renewal_period: Literal["minute"]
    key: LegacyRateLimitKey = LegacyRateLimitKey.ENDPOINT
