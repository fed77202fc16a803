"""Which hosts' vLLM servers are in the targets a rollout keeps: written where they are read.

The entries are the file_sd list operations.cli.targets builds for the whole inventory (the
list the monitoring layer writes as ``targets/vllm.json`` on its Prometheus hosts), less the
hosts taken out. Each change is written atomically (targets.write_atomic) to the controller's
``--targets-file`` (a load balancer's or the operator's Prometheus), and pushed to every
monitoring host's ``/etc/gpufleet/prometheus/targets/vllm.json`` by a pyinfra run of
operations/rollout/push.py: Prometheus re-reads a file_sd file when it changes. With every
host back in, the file is the one the monitoring layer writes, so a deploy plans no change.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from operations.cli.targets import file_sd, write_atomic
from operations.config.model import FleetConfig

Runner = Callable[..., int]
PUSH = "operations/rollout/push.py"
ENV = "GPUFLEET_ROLLOUT_TARGETS"  # push.py reads the controller file's path from it (the
# deploy's config guard refuses a --data key that is no setting)


def monitoring_hosts(hosts: Mapping[str, tuple[Any, FleetConfig]]) -> list[str]:
    """The hosts that run the monitoring layer's Prometheus (they read targets/vllm.json)."""
    return [
        name
        for name, (_data, config) in hosts.items()
        if "monitoring" in config.deploy.layers and config.monitoring.prometheus
    ]


def push_command(inventory: str, hosts: Sequence[str]) -> list[str]:
    """The pyinfra run that installs the file named by $GPUFLEET_ROLLOUT_TARGETS as the
    monitoring hosts' vllm.json."""
    limits = [arg for host in hosts for arg in ("--limit", host)]
    return [sys.executable, "-m", "pyinfra", "-y", inventory, PUSH, *limits]


class Membership:
    """The targets of every vLLM server, less the hosts taken out, and where they go."""

    def __init__(
        self,
        hosts: Mapping[str, tuple[Any, FleetConfig]],
        targets_file: Path | None = None,
        inventory: str | None = None,
        run: Runner | None = None,
    ):
        self.entries = file_sd(hosts)
        self.out: set[str] = set()
        self.targets_file = targets_file
        self.monitoring = monitoring_hosts(hosts) if inventory and run else []
        self.inventory, self.run = inventory, run

    def targets(self, hosts: Iterable[str]) -> dict[str, list[str]]:
        """{host: its servers' host:port (https://host:port behind a TLS gateway)}, for hosts
        that serve vLLM (others are left out)."""
        wanted, found = list(hosts), {}
        for entry in self.entries:
            name = entry["labels"]["gpufleet_host"]
            scheme = entry["labels"].get("__scheme__")
            if name in wanted:
                found.setdefault(name, []).extend(
                    f"{scheme}://{target}" if scheme else target for target in entry["targets"]
                )
        return {name: found[name] for name in wanted if name in found}

    def current(self) -> list[dict]:
        """The file_sd entries of the hosts that are in."""
        return [e for e in self.entries if e["labels"]["gpufleet_host"] not in self.out]

    def text(self) -> str:
        """The targets file as the monitoring layer writes it."""
        return json.dumps(self.current(), indent=2, sort_keys=True) + "\n"

    def where(self) -> str:
        """Where the targets are written, for the progress lines."""
        places = [str(self.targets_file)] if self.targets_file else []
        places += [f"Prometheus on {h}" for h in self.monitoring]
        return ", ".join(places) or "nowhere (no --targets-file, no monitoring host)"

    def take_out(self, hosts: Iterable[str]) -> list[str]:
        """Take ``hosts`` out and publish; the problems publishing met (none: [])."""
        self.out |= set(hosts)
        return self.publish()

    def put_back(self, hosts: Iterable[str]) -> list[str]:
        """Put ``hosts`` back in and publish; the problems publishing met."""
        self.out -= set(hosts)
        return self.publish()

    def publish(self) -> list[str]:
        """Write the current targets to the controller file and push them to the monitoring
        hosts; what failed, each as one line."""
        text, problems = self.text(), []
        if self.targets_file:
            try:
                write_atomic(self.targets_file, text)
            except OSError as error:
                problems.append(f"cannot write {self.targets_file}: {error.strerror or error}")
        if self.monitoring:
            problems += self._push(text)
        return problems

    def _push(self, text: str) -> list[str]:
        """Push ``text`` to the monitoring hosts (one pyinfra run)."""
        with tempfile.TemporaryDirectory(prefix="gpufleet-rollout-") as folder:
            path = Path(folder) / "vllm.json"
            path.write_text(text, encoding="utf-8")
            os.environ[ENV] = str(path)  # the pyinfra run inherits it
            try:
                code = self.run(push_command(self.inventory, self.monitoring), cwd=_root())
            finally:
                os.environ.pop(ENV, None)
        if code != 0:
            hosts = ", ".join(self.monitoring)
            return [f"pushing the targets to {hosts} failed: pyinfra exited {code}"]
        return []


def _root() -> Path:
    from operations.inventory import ROOT

    return ROOT
