"""``gpufleet``: one console command for the project's tools (``[project.scripts]``).

    gpufleet rollout INVENTORY [--batch N] [--limit P] [-- PYINFRA-ARGS]
    gpufleet targets INVENTORY -o FILE        Prometheus file_sd targets of the vLLM servers
    gpufleet render [--check]                 group_data/all.py, JSON Schema, README reference
    gpufleet lab {up,down,status,repo,ask,image}

Each subcommand is the tool's own main with the rest of the arguments, so ``gpufleet X`` and
``python -m operations.cli.X`` (``python -m lab``) behave the same, exit codes included. The
deploy and verify stay pyinfra's and pytest's own commands (``pyinfra INVENTORY deploy.py``,
``pytest tests/verify --inventory INVENTORY``); run every command from the project root.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _rollout(argv: list[str]) -> int:
    from operations.cli import rollout

    return rollout.main(argv)


def _targets(argv: list[str]) -> int:
    from operations.cli import targets

    return targets.main(argv)


def _render(argv: list[str]) -> int:
    from operations.cli import render

    return render.main(argv)


def _lab(argv: list[str]) -> int:
    from lab.__main__ import main as lab_main

    return lab_main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "rollout": (_rollout, "roll a change through the fleet in readiness-gated batches"),
    "targets": (_targets, "write the Prometheus file_sd targets of the vLLM servers"),
    "render": (_render, "render group_data/all.py, the JSON Schema and the README reference"),
    "lab": (_lab, "the local lab fleet: up, down, status, repo, ask, image"),
}


def usage() -> str:
    lines = ["usage: gpufleet COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "gpufleet COMMAND --help: the command's own options"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; 2 (with the usage) for none or an unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"gpufleet: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    run, _ = COMMANDS[args[0]]
    return run(args[1:])


if __name__ == "__main__":
    sys.exit(main())
