"""`python -m lab {up,down,status,repo,ask,image,gpu}`: the local lab fleet (see lab/__init__.py;
`gpu`: the STAND-IN GPU hosts of lab/gpu.py)."""

from __future__ import annotations

import argparse
import os
import sys

from lab import LabError, repo_root

GPU_VARIANTS = ("h100", "hgx8")  # lab/gpu.py VARIANTS (not imported: --help stays cheap)


def _hosts(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab",
        description="Local lab fleet: Debian 12 hosts (systemd + sshd containers) for pyinfra.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mirror_help = (
        "Debian mirror to build the image from "
        "(default: $LAB_DEBIAN_MIRROR, else the controller's own apt sources)"
    )
    up = sub.add_parser(
        "up", help="bring up N hosts reachable over SSH and the stand-in repo (idempotent)"
    )
    up.add_argument("--hosts", type=_hosts, default=3, metavar="N", help="number of hosts (3)")
    up.add_argument("--mirror", metavar="URL", help=mirror_help)
    up.add_argument(
        "--apt-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hosts fetch packages through the lab's shared apt-cacher-ng (deploy_apt_proxy); "
        "on by default",
    )
    up.add_argument(
        "--gpu",
        action="append",
        choices=GPU_VARIANTS,
        default=[],
        metavar="VARIANT",
        help="also a STAND-IN GPU host: h100 or hgx8 (lab/gpu.py; repeatable)",
    )
    sub.add_parser("down", help="remove the hosts, the repository container, the state file")
    sub.add_parser("status", help="show the hosts, whether they answer SSH, and the repository")
    sub.add_parser(
        "repo",
        help="only build and serve the stand-in toolkit repository (hosts untouched)",
    )
    ask = sub.add_parser("ask", help="ask every vLLM server of a targets file for a completion")
    ask.add_argument("targets", help="Prometheus file_sd file (python -m operations.cli.targets)")
    prom = sub.add_parser("prometheus", help="list a Prometheus' targets; fail unless all up")
    prom.add_argument("url", help="its base URL, e.g. http://172.17.0.3:9090")
    gpu = sub.add_parser("gpu", help="the STAND-IN GPU hosts (lab/gpu.py), beside lab-1..N")
    gpu_sub = gpu.add_subparsers(dest="gpu_command", required=True, metavar="ACTION")
    gpu_up = gpu_sub.add_parser("up", help="bring up a GPU host, healthy (idempotent)")
    gpu_up.add_argument("variant", choices=GPU_VARIANTS)
    fault = gpu_sub.add_parser("fault", help="put one fault on a GPU host ('none': heal it)")
    fault.add_argument("variant", choices=GPU_VARIANTS)
    fault.add_argument("fault", help="a fault of tests/standins/gpu FAULTS, or none")
    fault.add_argument("--index", type=int, default=-1, help="which GPU (default: the last)")
    gpu_sub.add_parser("down", help="remove the GPU hosts")
    image = sub.add_parser("image", help="build the host image (only if it is out of date)")
    image.add_argument("--rebuild", action="store_true", help="build even if up to date")
    image.add_argument("--mirror", metavar="URL", help=mirror_help)
    return parser


def _dispatch(args: argparse.Namespace, root) -> None:
    """Run one command. Imports are here so that `--help` works even where something below
    is broken."""
    from lab import fleet, image

    if args.command == "up":
        fleet.up(root, args.hosts, mirror=args.mirror, apt_cache=args.apt_cache)
        _gpu_hosts(args.gpu, root)
    elif args.command == "gpu":
        _gpu(args, root)
    elif args.command == "down":
        fleet.down(root)
    elif args.command == "status":
        fleet.status(root)
    elif args.command == "repo":
        fleet.serve_repo(root)
    elif args.command in ("ask", "prometheus"):
        _ask(args)
    elif args.command == "image":
        from lab.engine import ensure_engine

        ensure_engine()
        built = image.ensure_image(root, rebuild=args.rebuild, mirror=args.mirror)
        if not built:
            print(f"{image.IMAGE} is up to date (recipe {image.recipe_hash()})")


def _ask(args: argparse.Namespace) -> None:
    """`ask TARGETS`: every vLLM server answers; `prometheus URL`: every target is up."""
    if args.command == "ask":
        from lab.ask import ask

        if not ask(args.targets):
            raise LabError("not every vLLM server answered")
        return
    from lab.prometheus import show

    if not show(args.url):
        raise LabError(f"not every target of {args.url} is up")


def _gpu_hosts(variants: list[str], root) -> None:
    """`up --gpu VARIANT...`: the STAND-IN GPU hosts too, once each."""
    from lab import gpu

    for variant in dict.fromkeys(variants):
        gpu.ensure_gpu_host(variant, root)


def _gpu(args: argparse.Namespace, root) -> None:
    """`python -m lab gpu ACTION`: the STAND-IN GPU hosts."""
    from lab import gpu

    if args.gpu_command == "up":
        gpu.ensure_gpu_host(args.variant, root)
    elif args.gpu_command == "fault":
        chosen = None if args.fault == "none" else args.fault
        gpu.inject(args.variant, chosen, root, args.index)
        print(f"{gpu.host_name(args.variant)}: {chosen or 'healthy'}")
    else:
        gpu.down(root)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = repo_root()
    try:
        _dispatch(args, root)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for users; LAB_DEBUG=1 shows it
        if os.environ.get("LAB_DEBUG"):
            raise
        print(
            f"lab: unexpected error: {type(exc).__name__}: {exc} (LAB_DEBUG=1 shows details)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
