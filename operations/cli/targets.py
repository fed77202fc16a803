"""Prometheus scrape targets for the fleet's vLLM servers, as a file_sd targets file.

    python -m operations.cli.targets inventory/prod.py                 # every host
    python -m operations.cli.targets inventory/prod.py --limit gpu -o /etc/prometheus/vllm.json

Prometheus' ``file_sd_configs`` re-reads the file whenever it changes, so a scrape job such as

    - job_name: vllm
      file_sd_configs: [{files: [/etc/prometheus/vllm.json]}]

follows the fleet without a restart. There is one target per vLLM server (container) of every
selected host whose ``deploy_layers`` include ``vllm``, labelled with the inventory host
(``gpufleet_host``), the server (``gpufleet_instance``) and the model clients ask for
(``model``). vLLM serves its metrics at the default ``/metrics`` path, without the API key.
Behind a TLS gateway a target also carries ``__scheme__: https``; a Prometheus of your own
then needs the gateways' certificates as its ``tls_config.ca_file``, as the monitoring layer's
Prometheus gets them.

The address is where the server listens: ``vllm_bind_address`` when it is one specific
address, else ``host_address``, else the host's ``ssh_hostname``, else its inventory name.
Config is validated like a deploy validates it (operations.config.load): a bad value is reported
and nothing is written, as for an inventory that cannot be read, a selection of no host or an
output that cannot be written. The file is replaced atomically, so Prometheus never reads half
of it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyinfra.api.exceptions import PyinfraError

from operations.config.model import FleetConfig
from operations.inventory import add_limit_option, select
from operations.kit.common import url_host

DEFAULT_OUTPUT = Path("reports/prometheus/vllm-targets.json")


def address(name: str, data: Mapping[str, Any], config: FleetConfig, bind: Any = None) -> str:
    """Where Prometheus reaches a host's service bound to ``bind`` (default: the vLLM
    servers' address), IPv6 in brackets (ready for ``:port``).

    A service bound to one address listens only there; bound to all (0.0.0.0 / ::) it is
    reached at the host's declared address or, failing that, the one pyinfra connects to."""
    bind = config.vllm.bind_address if bind is None else bind
    if not bind.is_unspecified:
        found = str(bind)
    else:
        found = config.host.address or data.get("ssh_hostname") or name
    return url_host(found)


def tls_gateway(config: FleetConfig) -> bool:
    """Whether the host's servers are reached through its gateway's TLS (https)."""
    gateway = config.gateway
    return gateway.enabled(config.vllm.bind_address) and gateway.tls_cert_file is not None


def gateway_cert_files(hosts: Mapping[str, tuple[Mapping[str, Any], FleetConfig]]) -> list[str]:
    """The controller paths of the hosts' TLS gateway certificates, each once, sorted: what
    a client of their https servers trusts (Prometheus, the rollout's probes)."""
    return sorted(
        {str(config.gateway.tls_cert_file) for _, config in hosts.values() if tls_gateway(config)}
    )


def file_sd(hosts: Mapping[str, tuple[Mapping[str, Any], FleetConfig]]) -> list[dict]:
    """file_sd entries, one per vLLM server of each host that runs the vLLM layer, sorted by
    host and server so that the same fleet always gives the same file. A server behind a TLS
    gateway carries ``__scheme__: https``, which Prometheus scrapes it with (a target's own
    ``__scheme__`` wins over its job's)."""
    entries = []
    for name, (data, config) in hosts.items():
        if "vllm" not in config.deploy.layers:
            continue
        where = address(name, data, config)
        for server in config.vllm.servers():
            labels = {
                "gpufleet_host": name,
                "gpufleet_instance": server.name,
                "model": server.served_name,
                **({"__scheme__": "https"} if tls_gateway(config) else {}),
            }
            entries.append({"targets": [f"{where}:{server.port}"], "labels": labels})
    return sorted(
        entries, key=lambda e: (e["labels"]["gpufleet_host"], e["labels"]["gpufleet_instance"])
    )


def write_atomic(path: Path, text: str) -> None:
    """Write a file by renaming a complete temporary file over it: readers (Prometheus
    watches this file) see the old content or the new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a prometheus user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def load_hosts(
    inventory: str, limit: Sequence[str], exclude: Sequence[str] = (), warn: bool = False
) -> dict[str, tuple[dict[str, Any], FleetConfig]]:
    """Data and validated config of the selected hosts (raises ConfigError, or
    InventoryError when the inventory cannot be read or no host is selected)."""
    selection = select(inventory, limit, exclude)
    for line in selection.warnings if warn else ():
        print(f"warning: {line}", file=sys.stderr)
    configs = selection.configs()
    return {name: (data, configs[name]) for name, data in selection.hosts.items()}


def check_output(path: Path) -> None:
    """Refuse a targets file that cannot be written, before the inventory is read."""
    if path.is_dir():
        raise OSError(errno.EISDIR, "is a directory, not a file", str(path))
    parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir():
        raise OSError(errno.ENOTDIR, f"{parent} is not a directory", str(path))
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OSError(errno.EACCES, "permission denied", str(path))


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt is for SIGINT."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m operations.cli.targets",
        description="Write a Prometheus file_sd targets file for the fleet's vLLM servers.",
    )
    parser.add_argument("inventory", help="pyinfra inventory, e.g. inventory/prod.py")
    add_limit_option(parser)
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"targets file to write (default: {DEFAULT_OUTPUT})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the targets file; 0 when written, 2 when the config, the inventory or the output
    is refused (nothing is written then: no host selected never gives an empty file), 130 or
    143 when interrupted (the old file stays as it was: write_atomic removes its partial one)."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        check_output(args.output)
        hosts = load_hosts(args.inventory, args.limit, args.exclude, warn=True)
        entries = file_sd(hosts)
        write_atomic(args.output, json.dumps(entries, indent=2, sort_keys=True) + "\n")
    except PyinfraError as error:  # ConfigError, InventoryError: one line each, no file written
        print(error, file=sys.stderr)
        return 2
    except OSError as error:  # the targets file: a directory, no permission, a full disk
        print(f"cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        name = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
        print(f"interrupted ({name}): {args.output} not changed", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    served = len({entry["labels"]["gpufleet_host"] for entry in entries})
    print(f"wrote {len(entries)} vLLM target(s) of {served} host(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
