"""Provider-neutral request, response and usage types (OpenAI-shaped), shared by every translator."""
