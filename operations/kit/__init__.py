"""Shared kit the layers build on: quoting, bounds, the deploy lock, the recreation throttle,
converged operations, packages and repositories, daemon.json, and the shell scripts."""
