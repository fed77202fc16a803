"""Plan a rollout without rolling it: what ``python -m operations.cli.rollout`` does before its
first batch (validate every host's config, the batch size, the canary, the targets' membership,
the batches), for the scale benchmark. Prints the batch count; deploys nothing.

    python -m benchmarks.replay.plan INVENTORY
"""

from __future__ import annotations

import sys

from operations.cli import rollout


def main(argv: list[str] | None = None) -> int:
    args = rollout._parser().parse_args(argv)
    selection = rollout.validated(args.inventory, args.limit, [], args.exclude)
    batch, plan = rollout._plan(args, args.inventory, selection, rollout.call,
                                rollout.http_probe, lambda _s: None)  # fmt: skip
    batches = rollout.plan_batches(list(selection.hosts), batch, plan.canary)
    print(f"planned {len(batches)} batch(es) of {len(selection.hosts)} host(s), {batch} a batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
