"""Provider name → translator factory: the only place where spec names meet classes.

Each provider unit adds one import and one line to ``FACTORIES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from servegate.providers.ai21 import AI21Provider
from servegate.providers.anthropic import AnthropicProvider
from servegate.providers.azure_openai import AzureOpenAIProvider
from servegate.providers.base import Provider
from servegate.providers.bedrock import BedrockProvider
from servegate.providers.cohere import CohereProvider
from servegate.providers.custom import CustomProvider
from servegate.providers.databricks import DatabricksServingProvider
from servegate.providers.openai import OpenAIProvider
from servegate.providers.vertex import VertexProvider
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


FACTORIES: dict[ProviderName, Factory] = {
    ProviderName.OPENAI: _openai,
    ProviderName.CUSTOM: lambda model, secrets, _: CustomProvider(model, secrets),
    ProviderName.DATABRICKS_MODEL_SERVING: lambda m, s, _: DatabricksServingProvider(m, s),
    ProviderName.AMAZON_BEDROCK: lambda model, secrets, _: BedrockProvider(model, secrets),
    ProviderName.COHERE: lambda model, secrets, _: CohereProvider(model, secrets),
    ProviderName.GOOGLE_CLOUD_VERTEX_AI: lambda m, s, creds: VertexProvider(m, s, creds),
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
