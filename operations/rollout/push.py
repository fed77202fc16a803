"""pyinfra deploy file: install the rollout's vLLM targets on the monitoring hosts.

    GPUFLEET_ROLLOUT_TARGETS=/controller/path/vllm.json \
        pyinfra -y INVENTORY operations/rollout/push.py --limit MON

operations.rollout.membership runs it each time a batch's hosts are taken out of the targets
or put back. The file is uploaded beside the live one and renamed over it, so Prometheus
(which re-reads file_sd files on change) never reads half of it; a host without the
monitoring layer's config directory is failed rather than given one.
"""

import os

from pyinfra.operations import files, server

from operations.rollout.membership import ENV

LIVE = "/etc/gpufleet/prometheus/targets/vllm.json"
TEMP = f"{LIVE}.rollout"

source = os.environ.get(ENV)
if not source:
    raise SystemExit(f"push.py needs {ENV}=PATH (the targets file to install)")

server.shell(
    name="The monitoring layer's targets directory exists",
    commands=[f"test -d {LIVE.rsplit('/', 1)[0]}"],
)
files.put(name="Upload the rollout's vLLM targets", src=source, dest=TEMP, mode="644")
server.shell(name="Put them in place (Prometheus re-reads them)", commands=[f"mv -f {TEMP} {LIVE}"])
