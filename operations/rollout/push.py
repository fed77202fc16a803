"""pyinfra deploy file: install the rollout's vLLM targets on the monitoring hosts.

    pyinfra -y INVENTORY operations/rollout/push.py --limit MON \
        --data gpufleet_rollout_targets=/controller/path/vllm.json

operations.rollout.membership runs it each time a batch's hosts are taken out of the targets
or put back. The file is uploaded beside the live one and renamed over it, so Prometheus
(which re-reads file_sd files on change) never reads half of it; a host without the
monitoring layer's config directory is failed rather than given one.
"""

from pyinfra import host
from pyinfra.operations import files, server

from operations.rollout.membership import DATA_KEY

LIVE = "/etc/gpufleet/prometheus/targets/vllm.json"
TEMP = f"{LIVE}.rollout"

source = host.data.get(DATA_KEY)
if not source:
    raise SystemExit(f"push.py needs --data {DATA_KEY}=PATH (the targets file to install)")

server.shell(
    name="The monitoring layer's targets directory exists",
    commands=[f"test -d {LIVE.rsplit('/', 1)[0]}"],
)
files.put(name="Upload the rollout's vLLM targets", src=source, dest=TEMP, mode="644")
server.shell(name="Put them in place (Prometheus re-reads them)", commands=[f"mv -f {TEMP} {LIVE}"])
