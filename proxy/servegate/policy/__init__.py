"""Governance before routing: rate limits now; guardrails later."""
