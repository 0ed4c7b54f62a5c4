"""The ServingEndpoint spec: the Databricks create-endpoint body without `name`.

Field names are the API's, verbatim snake_case. Models keep unknown fields (see
`providers` for why); fields servegate does not act on (`entity_name`, `workload_size`,
`auto_capture_config`, ...) are accepted only so that a GET echoes them back.

Traffic rules: routes must name existing served entities, at most one route each, and
sum to 100. An entity without a route receives 0 % of primary traffic, which Databricks
documents as legal: such an entity is a fallback-only target. With a single entity and no
`traffic_config` the entity gets 100 %, written into the spec so a later GET shows it.

Cross-field rules raise `SpecError` with a `loc` below the model that checks them, so
error paths point at the offending field (`traffic_config.routes[1]`), not its parent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, field_validator, model_validator

from servegate.spec.gateway import (
    AiGatewayConfig,
    RateLimit,
)
from servegate.spec.providers import (
    Ai21LabsConfig,
    AmazonBedrockConfig,
    AnthropicConfig,
    CohereConfig,
    CustomProviderConfig,
    DatabricksModelServingConfig,
    GoogleCloudVertexAiConfig,
    OpenAIConfig,
    PalmConfig,
    ProviderConfig,
    SpecError,
    SpecModel,
)
from servegate.spec.secrets import Credential

MAX_SERVED_ENTITIES = 15
_ENTITY_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


class Provider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    COHERE = "cohere"
    AMAZON_BEDROCK = "amazon-bedrock"
    GOOGLE_CLOUD_VERTEX_AI = "google-cloud-vertex-ai"
    AI21LABS = "ai21labs"
    DATABRICKS_MODEL_SERVING = "databricks-model-serving"
    CUSTOM = "custom"
    PALM = "palm"


class Task(StrEnum):
    CHAT = "llm/v1/chat"
    COMPLETIONS = "llm/v1/completions"
    EMBEDDINGS = "llm/v1/embeddings"


def _enum_value(enum: type[StrEnum], what: str, value: object) -> object:
    """Parse an enum with a message that lists the allowed values (they are case-sensitive)."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str) and value in enum._value2member_map_:
        return enum(value)
    allowed = ", ".join(member.value for member in enum)
    raise ValueError(f"unknown {what} {value!r}; allowed values: {allowed}")


PROVIDER_CONFIG_FIELDS: dict[Provider, str] = {
    Provider.OPENAI: "openai_config",
    Provider.ANTHROPIC: "anthropic_config",
    Provider.COHERE: "cohere_config",
    Provider.AMAZON_BEDROCK: "amazon_bedrock_config",
    Provider.GOOGLE_CLOUD_VERTEX_AI: "google_cloud_vertex_ai_config",
    Provider.AI21LABS: "ai21labs_config",
    Provider.DATABRICKS_MODEL_SERVING: "databricks_model_serving_config",
    Provider.CUSTOM: "custom_provider_config",
    Provider.PALM: "palm_config",
}


def _check_foreign_configs(provider: Provider, present: list[str]) -> None:
    expected = PROVIDER_CONFIG_FIELDS[provider]
    for name in present:
        if name != expected:
            raise SpecError(
                f"provider is {provider}, so only {expected} may be set, not {name}",
                loc=(name,),
            )


class ExternalModel(SpecModel):
    """A third-party model: provider, the provider's model id, task, and one provider config."""

    name: str = Field(min_length=1, description="Model id at the provider, e.g. gpt-4o-mini.")
    provider: Provider
    task: Task
    openai_config: OpenAIConfig | None = None
    anthropic_config: AnthropicConfig | None = None
    cohere_config: CohereConfig | None = None
    amazon_bedrock_config: AmazonBedrockConfig | None = None
    google_cloud_vertex_ai_config: GoogleCloudVertexAiConfig | None = None
    ai21labs_config: Ai21LabsConfig | None = None
    databricks_model_serving_config: DatabricksModelServingConfig | None = None
    custom_provider_config: CustomProviderConfig | None = None
    palm_config: PalmConfig | None = None

    @field_validator("provider", mode="before")
    @classmethod
    def _provider(cls, value: object) -> object:
        return _enum_value(Provider, "provider", value)

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, value: object) -> object:
        return _enum_value(Task, "task", value)

    @model_validator(mode="before")
    @classmethod
    def _no_foreign_config(cls, data: object) -> object:
        # Runs before the configs are validated: an `openai_config` under provider
        # anthropic is a wrong key, and its own errors would only distract.
        if not isinstance(data, Mapping):
            return data
        provider = data.get("provider")
        if isinstance(provider, str) and provider in Provider._value2member_map_:
            present = [
                name for name in PROVIDER_CONFIG_FIELDS.values() if data.get(name) is not None
            ]
            _check_foreign_configs(Provider(provider), present)
        return data

    @model_validator(mode="after")
    def _matching_config(self) -> Self:
        expected = PROVIDER_CONFIG_FIELDS[self.provider]
        _check_foreign_configs(
            self.provider,
            [n for n in PROVIDER_CONFIG_FIELDS.values() if getattr(self, n) is not None],
        )
        if getattr(self, expected) is None:
            raise SpecError(f"provider {self.provider} requires {expected}", loc=(expected,))
        return self

    def provider_config(self) -> ProviderConfig:
        """The `<provider>_config` matching `provider` (validation guarantees it is set)."""
        config: ProviderConfig = getattr(self, PROVIDER_CONFIG_FIELDS[self.provider])
        return config

    def credentials(self) -> list[Credential]:
        return self.provider_config().credentials()


def default_entity_name(model_name: str) -> str:
    """The platform's default served-entity name for an external model."""
    return model_name.replace(".", "-").replace(":", "-")


class ServedEntity(SpecModel):
    """One served entity; servegate serves `external_model` entities only."""

    name: str = Field(
        default="",
        description="Unique within the endpoint, [A-Za-z0-9_-]+; default: "
        "external_model.name with '.' and ':' replaced by '-'.",
    )
    external_model: ExternalModel
    # The custom-model fields below are accepted and echoed, never acted on.
    entity_name: str | None = None
    entity_version: str | None = None
    workload_size: str | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: bool | None = None
    environment_vars: dict[str, str] | None = None
    instance_profile_arn: str | None = None

    @model_validator(mode="after")
    def _resolve_name(self) -> Self:
        derived = not self.name
        if derived:
            self.name = default_entity_name(self.external_model.name)
        if not _ENTITY_NAME_RE.fullmatch(self.name):
            origin = " (derived from external_model.name; set name explicitly)" if derived else ""
            raise SpecError(
                f"served entity name {self.name!r}{origin} may only contain "
                "letters, digits, '-' and '_'",
                loc=("name",),
            )
        return self


def _percentage(value: object) -> object:
    """Proto-JSON int parsing: accept ints and numeric strings ("90"), nothing else."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value)) or (
        isinstance(value, float) and value.is_integer()
    ):
        number = int(value)
    if number is None or not 0 <= number <= 100:
        raise ValueError("traffic_percentage must be an integer from 0 to 100")
    return number


class Route(SpecModel):
    served_model_name: str | None = Field(
        default=None, description="Served entity receiving this share (always emitted on GET)."
    )
    served_entity_name: str | None = Field(
        default=None, description="Newer alias of served_model_name; either may be given."
    )
    traffic_percentage: Annotated[int, BeforeValidator(_percentage), Field(ge=0, le=100)]

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        model, entity = self.served_model_name, self.served_entity_name
        if model is None and entity is None:
            raise SpecError("a route needs served_model_name (or served_entity_name)")
        if model is not None and entity is not None and model != entity:
            raise SpecError(f"served_model_name {model!r} and served_entity_name {entity!r} differ")
        self.served_model_name = model if model is not None else entity
        return self

    @property
    def target(self) -> str:
        """Name of the served entity this route points at."""
        return self.served_model_name or self.served_entity_name or ""


class TrafficConfig(SpecModel):
    routes: list[Route]

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: list[Route]) -> list[Route]:
        seen: dict[str, int] = {}
        for index, route in enumerate(routes):
            if route.target in seen:
                raise SpecError(
                    f"served entity {route.target!r} has more than one route "
                    f"(also routes[{seen[route.target]}])",
                    loc=(index,),
                )
            seen[route.target] = index
        total = sum(route.traffic_percentage for route in routes)
        if total != 100:
            raise SpecError(f"traffic percentages must sum to 100, got {total}")
        return routes


class AutoCaptureConfig(SpecModel):
    """Legacy inference tables; accepted and echoed, not acted on."""

    catalog_name: str | None = None
    schema_name: str | None = None
    table_name_prefix: str | None = None
    enabled: bool | None = None


class EndpointCoreConfig(SpecModel):
    name: str | None = Field(
        default=None, description="Ignored: the endpoint name is not part of the config."
    )
    served_entities: list[ServedEntity] = Field(min_length=1, max_length=MAX_SERVED_ENTITIES)
    served_models: list[dict[str, Any]] | None = Field(
        default=None,
        description="Deprecated; must be empty: external models go in served_entities.",
    )
    traffic_config: TrafficConfig | None = Field(
        default=None, description="Required with two or more served entities."
    )
    auto_capture_config: AutoCaptureConfig | None = None

    @field_validator("served_entities", mode="before")
    @classmethod
    def _external_only(cls, value: object) -> object:
        # Checked on the raw list so the message can name the entity by its index.
        if isinstance(value, list):
            if not 1 <= len(value) <= MAX_SERVED_ENTITIES:
                raise SpecError(
                    f"an endpoint needs 1 to {MAX_SERVED_ENTITIES} served entities, got {len(value)}"
                )
            for index, item in enumerate(value):
                if isinstance(item, Mapping) and item.get("external_model") is None:
                    raise SpecError(
                        "servegate serves external models only; "
                        f"served_entities[{index}] has no external_model",
                        loc=(index,),
                    )
        return value

    @field_validator("served_models")
    @classmethod
    def _no_served_models(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise SpecError("served_models is not supported: external models go in served_entities")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        entities = self.served_entities
        first_index: dict[str, int] = {}
        for index, entity in enumerate(entities):
            if entity.name in first_index:
                raise SpecError(
                    f"duplicate served entity name {entity.name!r} "
                    f"(also served_entities[{first_index[entity.name]}])",
                    loc=("served_entities", index, "name"),
                )
            first_index[entity.name] = index
        first = entities[0]
        for index, entity in enumerate(entities[1:], start=1):
            if entity.external_model.task != first.external_model.task:
                raise SpecError(
                    "all served entities of an endpoint must have the same task; "
                    f"{first.name} is {first.external_model.task}, "
                    f"{entity.name} is {entity.external_model.task}",
                    loc=("served_entities", index, "external_model", "task"),
                )
        if self.traffic_config is None:
            if len(entities) > 1:
                raise SpecError(
                    f"the endpoint has {len(entities)} served entities; add traffic_config.routes "
                    "naming them, with traffic percentages summing to 100",
                    loc=("traffic_config",),
                )
            route = Route(served_model_name=first.name, traffic_percentage=100)
            self.traffic_config = TrafficConfig(routes=[route])
        for index, route in enumerate(self.traffic_config.routes):
            if route.target not in first_index:
                raise SpecError(
                    f"route names served entity {route.target!r}, which does not exist; "
                    f"served entities: {', '.join(first_index)}",
                    loc=("traffic_config", "routes", index),
                )
        return self


class Tag(SpecModel):
    key: str = Field(min_length=1)
    value: str | None = None


class ServingEndpointSpec(SpecModel):
    config: EndpointCoreConfig
    ai_gateway: AiGatewayConfig | None = None
    tags: list[Tag] = Field(default_factory=list)
    description: str | None = None
    rate_limits: list[RateLimit] | None = Field(
        default=None, description="Deprecated; use ai_gateway.rate_limits."
    )

    @property
    def task(self) -> Task:
        """The endpoint's task (all served entities share it)."""
        return self.config.served_entities[0].external_model.task

    @property
    def entities(self) -> list[ServedEntity]:
        return self.config.served_entities

    def routes(self) -> dict[str, int]:
        """Traffic percentage per served entity name; 0 for an entity without a route."""
        shares = dict.fromkeys((entity.name for entity in self.entities), 0)
        if self.config.traffic_config is not None:
            for route in self.config.traffic_config.routes:
                shares[route.target] = route.traffic_percentage
        return shares

    def credentials(self) -> list[tuple[str, Credential]]:
        """Every credential of every served entity, paired with the entity's name."""
        return [
            (entity.name, credential)
            for entity in self.entities
            for credential in entity.external_model.credentials()
        ]
