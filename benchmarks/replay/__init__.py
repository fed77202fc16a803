"""STAND-IN replay hosts for the scale benchmark (issue 19): one SSH server, many simulated hosts.

A simulated host is one loopback port of one asyncssh server (``server``). Each answers a
command with the (stdout, stderr, exit status) that a real converged lab host gave for it,
from a recording (``recording``) made by ``python -m benchmarks.replay record``; a command with
no recording exits 127 with ``STAND-IN replay: no recording for: <command>`` and is logged, so
a command the deploy or verify starts sending cannot hide. pyinfra (paramiko), OpenSSH
(testinfra's backend) and the inventory see ordinary SSH hosts with pinned host keys.

This is a STAND-IN: nothing here is a real host. It measures the controller, not the hosts.
"""
