"""Command-line tools: thin mains over library functions (rollout, targets, render)."""
