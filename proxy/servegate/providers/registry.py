"""Provider name → translator factory: the only place where spec names meet classes.

Each provider unit adds one import and one line to ``FACTORIES``. Units whose SDKs are heavy
(botocore for Bedrock, google-auth for Vertex AI) are imported when an endpoint first uses
them, so a gateway that serves neither does not carry them in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from servegate.providers.ai21 import AI21Provider
from servegate.providers.anthropic import AnthropicProvider
from servegate.providers.azure_openai import AzureOpenAIProvider
from servegate.providers.base import Provider
from servegate.providers.cohere import CohereProvider
from servegate.providers.custom import CustomProvider
from servegate.providers.databricks import DatabricksServingProvider
from servegate.providers.openai import OpenAIProvider
from servegate.spec import ExternalModel, OpenAIApiType
from servegate.spec import Provider as ProviderName
from servegate.transport.credentials import CredentialRegistry

Factory = Callable[[ExternalModel, Mapping[str, str], CredentialRegistry], Provider]


class UnsupportedProvider(ValueError):
    """The spec names a provider this build of the gateway cannot serve."""


def _openai(
    model: ExternalModel, secrets: Mapping[str, str], creds: CredentialRegistry
) -> Provider:
    config = model.openai_config
    if config is not None and config.openai_api_type in (
        OpenAIApiType.AZURE,
        OpenAIApiType.AZUREAD,
    ):
        return AzureOpenAIProvider(model, secrets, creds)
    return OpenAIProvider(model, secrets)


def _bedrock(model: ExternalModel, secrets: Mapping[str, str], _: CredentialRegistry) -> Provider:
    from servegate.providers.bedrock import BedrockProvider

    return BedrockProvider(model, secrets)


def _vertex(
    model: ExternalModel, secrets: Mapping[str, str], creds: CredentialRegistry
) -> Provider:
    from servegate.providers.vertex import VertexProvider

    return VertexProvider(model, secrets, creds)


FACTORIES: dict[ProviderName, Factory] = {
    ProviderName.OPENAI: _openai,
    ProviderName.CUSTOM: lambda model, secrets, _: CustomProvider(model, secrets),
    ProviderName.DATABRICKS_MODEL_SERVING: lambda m, s, _: DatabricksServingProvider(m, s),
    ProviderName.AMAZON_BEDROCK: _bedrock,
    ProviderName.COHERE: lambda model, secrets, _: CohereProvider(model, secrets),
    ProviderName.GOOGLE_CLOUD_VERTEX_AI: _vertex,
    ProviderName.ANTHROPIC: lambda model, secrets, _: AnthropicProvider(model, secrets),
    ProviderName.AI21LABS: lambda model, secrets, _: AI21Provider(model, secrets),
}


def build_provider(
    model: ExternalModel, secrets: Mapping[str, str], credentials: CredentialRegistry
) -> Provider:
    """The translator for one served entity; ``secrets`` maps credential field → value."""
    factory = FACTORIES.get(model.provider)
    if factory is None:
        raise UnsupportedProvider(
            f"provider '{model.provider}' is not available in this servegate version"
        )
    return factory(model, secrets, credentials)
