"""Where each simulator listens in `servegate simulate` and the quick start (light: the CLI
imports it to build its flags without loading every simulator)."""

# The port each simulator takes in `servegate simulate` and the quickstart: the manifests in
# examples/ point at these.
EXAMPLE_PORTS: dict[str, int] = {
    "openai": 8901,
    "azure": 8902,
    "custom": 8903,
    "entra": 8904,
    "anthropic": 8905,
    "cohere": 8906,
    "bedrock": 8907,
    "vertex": 8908,
    "ai21": 8909,
    "judge": 8910,
}
