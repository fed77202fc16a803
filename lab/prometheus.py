"""`python -m lab prometheus URL`: the targets of a Prometheus (the lab's, on lab-1), one row
each, and whether every one is up: the quick start's proof that the monitoring layer scrapes
the whole fleet. Waits up to ``wait`` seconds for targets not scraped yet ("unknown")."""

from __future__ import annotations

import json
import time
import urllib.request

from lab import LabError
from lab.fleet import format_table


def active_targets(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/targets?state=active", timeout=10) as response:
        return json.loads(response.read())["data"]["activeTargets"]


def rows(targets: list[dict]) -> list[list[str]]:
    found = [
        [t["labels"].get("job", "?"), t["labels"].get("gpufleet_host", "?"), t.get("scrapeUrl", ""),
         t.get("health", "?"), t.get("lastError", "")]
        for t in targets
    ]  # fmt: skip
    return sorted(found)


def show(url: str, wait: float = 60) -> bool:
    """Print the targets table; True when there are targets and every one is up."""
    deadline = time.monotonic() + wait
    while True:
        try:
            targets = active_targets(url)
        except (OSError, ValueError, KeyError) as error:
            raise LabError(f"Prometheus at {url} did not answer: {error}") from None
        pending = any(t.get("health") == "unknown" for t in targets)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(format_table(["JOB", "HOST", "SCRAPED", "HEALTH", "ERROR"], rows(targets)))
    return bool(targets) and all(t.get("health") == "up" for t in targets)
