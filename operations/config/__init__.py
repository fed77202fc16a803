"""The configuration: the pydantic model (model), host data to config with operator-facing
errors (load), and the rules for secrets (secrets)."""
