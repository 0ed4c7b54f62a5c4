"""Guardrails: the checks ``ai_gateway.guardrails.{input,output}`` configures."""
