#!/usr/bin/env python3
"""gpufleet STAND-IN for NVIDIA's dcgm-exporter. It is NOT dcgm-exporter: no DCGM, no GPU.

The lab has no GPU and cannot pull `nvcr.io/nvidia/k8s/dcgm-exporter`, so its STAND-IN GPU
hosts run this server instead, in an image built from Debian packages (image.py beside
it). Modelled on dcgm-exporter 4.x (the 4.2.3-4.1.3 the config pins):

- it takes the counters CSV with `-f PATH` (or $DCGM_EXPORTER_COLLECTORS; default
  /etc/dcgm-exporter/default-counters.csv), in upstream's format (`FIELD, type, help`),
  and serves only those fields; a field name it does not know stops it at start, as a name
  unknown to DCGM stops the real one;
- `GET /metrics` prints dcgm-exporter's text: `# HELP`/`# TYPE` per field, then one sample
  per GPU labelled `gpu, UUID, pci_bus_id, device, modelName, Hostname` and the CSV's
  `label` fields (DCGM_FI_DRIVER_VERSION...); integers as integers, doubles with six
  decimals; a field a GPU does not support has no sample (DCGM's blank value);
- the values come from the STAND-IN GPU description (tests/standins/gpu, read again at
  every scrape, so a fault injected after the start shows at the next scrape):
  temperatures, clocks (halved under a HW slowdown reason), power and energy, ECC, retired
  pages, remapped rows, pending remap and remap failure, the last Xid of the GPU in the
  kernel log, clock event reasons and the violation counters they drive (time spent with
  the reason set), PCIe link and replays, NVLink errors (a link that is down counts one
  recovery error: it failed to recover), the fabric manager status, framebuffer memory;
- with no GPU description (a container started without `--gpus`, a host without GPUs) it
  fails at start as the real one does: `Error: Failed to initialize NVML` and
  `Error starting nv-hostengine: DCGM initialization error`, exit status 1.

Where the description is: $GPUFLEET_STANDIN_GPUS; else, in a container given GPUs, the
host's live directory that the STAND-IN nvidia-container-runtime-hook bind-mounts read-only
at /usr/share/gpufleet-standin/host (and /usr/share/gpufleet-standin/view.json: the file
there and which of the host's GPUs this container sees); else /etc/gpufleet-standin/gpus.json.

Only the standard library is used (Debian 12's python3.11-minimal + libpython3.11-stdlib).

    render_metrics(description, counters_csv)   # the pure function the tests call
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

VERSION = "4.2.3-4.1.3-standin"
BANNER = "gpufleet stand-in for NVIDIA's dcgm-exporter (not dcgm-exporter: no DCGM, no GPU)"
DEFAULT_COLLECTORS = "/etc/dcgm-exporter/default-counters.csv"
DEFAULT_ADDRESS = ":9400"
CONTAINER_VIEW = Path("/usr/share/gpufleet-standin")  # what the STAND-IN hook puts there
HOST_DESCRIPTION = "/etc/gpufleet-standin/gpus.json"
ENV = "GPUFLEET_STANDIN_GPUS"
PROM_TYPES = ("gauge", "counter", "histogram", "summary", "label")

# DCGM_CLOCKS_EVENT_REASON_* bits (dcgm_fields.h), and the violation counter each drives
GPU_IDLE, SW_POWER_CAP, HW_SLOWDOWN, SYNC_BOOST = 0x1, 0x4, 0x8, 0x10
SW_THERMAL, HW_THERMAL, HW_POWER_BRAKE = 0x20, 0x40, 0x80
VIOLATIONS = {
    "DCGM_FI_DEV_POWER_VIOLATION": SW_POWER_CAP | HW_POWER_BRAKE,
    "DCGM_FI_DEV_THERMAL_VIOLATION": SW_THERMAL | HW_THERMAL,
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION": SYNC_BOOST,
    "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION": HW_SLOWDOWN,
    "DCGM_FI_DEV_LOW_UTIL_VIOLATION": GPU_IDLE,
    "DCGM_FI_DEV_RELIABILITY_VIOLATION": 0,  # no NVML reason bit: stays 0
}
HALVING = HW_SLOWDOWN | HW_THERMAL | HW_POWER_BRAKE  # "reducing the core clocks by 2 or more"
XID_LINE = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})\): (\d+)")
# NVML_GPU_FABRIC_STATE_* -> dcgmFabricManagerStatus_t (NotSupported 0, NotStarted 1,
# InProgress 2, Success 3, Failure 4)
FABRIC_FAILURE = 4


# --- the counters CSV ---------------------------------------------------------------------


@dataclass(frozen=True)
class Counter:
    """One line of the counters CSV."""

    field: str
    kind: str
    help: str


class ConfigError(Exception):
    """A counters CSV the exporter refuses."""


def parse_counters(text: str) -> list[Counter]:
    """The counters of a CSV in upstream's format: `#` comments, `FIELD, type, help`."""
    counters: list[Counter] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3:  # Go's csv reader: every record has the first one's 3 fields
            raise ConfigError(f"record on line {number}: wrong number of fields: {line!r}")
        field_name, kind, help_text = parts
        if kind not in PROM_TYPES:
            raise ConfigError(f"line {number}: unknown Prometheus metric type {kind!r}")
        if field_name not in FIELDS and field_name not in LABELS:
            raise ConfigError(f"Could not find DCGM field: {field_name}")
        counters.append(Counter(field_name, kind, help_text))
    return counters


# --- values from the GPU description ------------------------------------------------------


class Blank(Exception):
    """DCGM has no value for this field on this GPU (not supported): no sample."""


def need(gpu: dict, *keys: str):
    """The description's values for `keys`; Blank when one is missing, unsupported or broken."""
    values = []
    for key in keys:
        if key in gpu.get("unsupported", ()) or key in gpu.get("broken", ()) or key not in gpu:
            raise Blank(key)
        values.append(gpu[key])
    return values[0] if len(values) == 1 else values


def reasons(gpu: dict) -> int:
    return int(need(gpu, "throttle_reasons"))


def sm_clock(gpu: dict, _ctx) -> int:
    clock = int(gpu.get("sm_clock_mhz", 1980))  # H100 SXM boost clock
    return clock // 2 if gpu.get("throttle_reasons", 0) & HALVING else clock


def ecc(key: str):
    def value(gpu: dict, _ctx) -> int:
        if need(gpu, "ecc_mode")[0] != 1:
            raise Blank("ECC disabled")
        return int(gpu.get(key, 0)) if key.startswith("ecc_corrected") else int(need(gpu, key))

    return value


def retired(gpu: dict, _ctx, key: str) -> int:
    need(gpu, "retired_pages_pending")  # an H100 has no page retirement: all three blank
    return int(gpu.get(key, 0))


def remapped(index: int):
    return lambda gpu, _ctx: int(need(gpu, "remapped_rows")[index])


def links(gpu: dict) -> list:
    found = gpu.get("nvlinks") or []
    if not found or "nvlinks" in gpu.get("unsupported", ()):
        raise Blank("no NVLink")
    return found


def nvlink(key: str, per_down_link: int = 0):
    def value(gpu: dict, _ctx) -> int:
        found = links(gpu)
        return int(gpu.get(key, 0)) + per_down_link * sum(1 for up in found if not up)

    return value


def fabric_status(gpu: dict, _ctx) -> int:
    fabric = gpu.get("fabric")
    if not isinstance(fabric, dict) or "fabric" in gpu.get("unsupported", ()):
        return 0  # NotSupported
    state = int(fabric.get("state", 0))
    if state == 3 and int(fabric.get("status", 0)) != 0:
        return FABRIC_FAILURE
    return state


def xid(gpu: dict, ctx: Context) -> int:
    """The last Xid the kernel log reports for this GPU's PCI address (0: none)."""
    domain, bus, device_fn = gpu["pci_bus_id"].split(":", 2)
    slot = f"{int(domain, 16):04x}:{bus}:{device_fn.split('.')[0]}".lower()
    last = 0
    for line in ctx.host.get("kernel_log", ()):
        match = XID_LINE.search(line)
        if match and match.group(1).lower() == slot:
            last = int(match.group(2))
    return last


def memory(used: bool):
    def value(gpu: dict, _ctx) -> int:
        total = int(need(gpu, "memory_total_mib"))
        in_use = int(gpu.get("memory_used_mib", 0))
        return in_use if used else total - in_use - int(gpu.get("memory_reserved_mib", 0))

    return value


def total(name: str):
    """A counter the server accumulates over time (violations, energy): ctx.totals."""
    return lambda gpu, ctx: int(ctx.totals.get(gpu["uuid"], {}).get(name, 0))


def watts(gpu: dict, _ctx) -> float:
    return int(need(gpu, "power_mw")) / 1000.0


@dataclass
class Context:
    """What a value needs beyond its GPU: the whole description and accumulated totals."""

    host: dict
    totals: dict


def _get(key: str, default=None):
    def value(gpu: dict, _ctx):
        if default is not None and key not in gpu:
            return default
        return int(need(gpu, key))

    return value


# Every field the stand-in can serve: DCGM's names (dcgm_fields.h), its value from the GPU.
FIELDS = {
    "DCGM_FI_DEV_SM_CLOCK": sm_clock,
    "DCGM_FI_DEV_MEM_CLOCK": lambda gpu, _ctx: int(gpu.get("mem_clock_mhz", 2619)),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": lambda gpu, _ctx: reasons(gpu),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": lambda gpu, _ctx: reasons(gpu),  # the old name
    "DCGM_FI_DEV_MEMORY_TEMP": lambda gpu, _ctx: int(
        gpu.get("memory_temperature_c", int(need(gpu, "temperature_c")) + 6)
    ),
    "DCGM_FI_DEV_GPU_TEMP": _get("temperature_c"),
    "DCGM_FI_DEV_SLOWDOWN_TEMP": _get("slowdown_c"),
    "DCGM_FI_DEV_SHUTDOWN_TEMP": _get("shutdown_c"),
    "DCGM_FI_DEV_POWER_USAGE": watts,
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": lambda gpu, _ctx: int(need(gpu, "power_limit_mw")) / 1000.0,
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": total("energy_mj"),
    "DCGM_FI_DEV_PCIE_TX_THROUGHPUT": _get("pcie_tx_kb", 0),
    "DCGM_FI_DEV_PCIE_RX_THROUGHPUT": _get("pcie_rx_kb", 0),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": _get("pcie_replays"),
    "DCGM_FI_DEV_PCIE_LINK_GEN": _get("pcie_gen"),
    "DCGM_FI_DEV_PCIE_LINK_WIDTH": _get("pcie_width"),
    "DCGM_FI_DEV_PCIE_MAX_LINK_GEN": _get("pcie_max_gen"),
    "DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH": _get("pcie_max_width"),
    "DCGM_FI_DEV_GPU_UTIL": _get("utilization_pct", 0),
    "DCGM_FI_DEV_MEM_COPY_UTIL": _get("memory_utilization_pct", 0),
    "DCGM_FI_DEV_ENC_UTIL": _get("encoder_utilization_pct", 0),
    "DCGM_FI_DEV_DEC_UTIL": _get("decoder_utilization_pct", 0),
    "DCGM_FI_DEV_XID_ERRORS": xid,
    **{name: total(name) for name in VIOLATIONS},
    "DCGM_FI_DEV_FB_FREE": memory(used=False),
    "DCGM_FI_DEV_FB_USED": memory(used=True),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ecc("ecc_corrected_volatile"),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ecc("ecc_volatile"),
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": ecc("ecc_corrected_aggregate"),
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": ecc("ecc_aggregate"),
    "DCGM_FI_DEV_RETIRED_SBE": lambda gpu, ctx: retired(gpu, ctx, "retired_sbe"),
    "DCGM_FI_DEV_RETIRED_DBE": lambda gpu, ctx: retired(gpu, ctx, "retired_dbe"),
    "DCGM_FI_DEV_RETIRED_PENDING": lambda gpu, ctx: retired(gpu, ctx, "retired_pages_pending"),
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL": nvlink("nvlink_crc_flit_errors"),
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL": nvlink("nvlink_crc_data_errors"),
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL": nvlink("nvlink_replay_errors"),
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL": nvlink("nvlink_recovery_errors", 1),
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": nvlink("nvlink_bandwidth"),
    "DCGM_FI_DEV_FABRIC_MANAGER_STATUS": fabric_status,
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS": lambda gpu, _ctx: 0,  # bare metal: no vGPU
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": remapped(0),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": remapped(1),
    "DCGM_FI_DEV_ROW_REMAP_PENDING": remapped(2),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": remapped(3),
    "DCGM_FI_DEV_PERSISTENCE_MODE": _get("persistence"),
}
# `label` fields: label values on every sample, as dcgm-exporter adds them
LABELS = {
    "DCGM_FI_DRIVER_VERSION": lambda host, gpu: host.get("driver", ""),
    "DCGM_FI_NVML_VERSION": lambda host, gpu: host.get("driver", ""),
    "DCGM_FI_DEV_VBIOS_VERSION": lambda host, gpu: gpu.get("vbios", ""),
}


# --- rendering ----------------------------------------------------------------------------


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: int | float) -> str:
    """Go's %d for DCGM's int64 fields, %f for its doubles (what dcgm-exporter prints)."""
    return f"{value:f}" if isinstance(value, float) else str(int(value))


def visible_gpus(host: dict, visible: list[int] | None) -> list[tuple[int, dict]]:
    """(device minor number, GPU) of the GPUs this exporter sees, in DCGM's order."""
    gpus = list(enumerate(host.get("gpus", [])))
    if visible is None:
        return gpus
    return [gpus[index] for index in visible if 0 <= index < len(gpus)]


def gpu_labels(index: int, minor: int, gpu: dict, hostname: str, extra: dict) -> str:
    """dcgm-exporter's label set, in its template's order (then the label fields, sorted)."""
    pairs = [
        ("gpu", str(index)),
        ("UUID", gpu.get("uuid", "")),
        ("pci_bus_id", gpu.get("pci_bus_id", "")),
        ("device", f"nvidia{minor}"),
        ("modelName", gpu.get("name", "")),
    ]
    if hostname:
        pairs.append(("Hostname", hostname))
    pairs += sorted(extra.items())
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in pairs) + "}"


def render_metrics(
    description: dict,
    counters_csv: str,
    *,
    hostname: str = "",
    totals: dict | None = None,
    visible: list[int] | None = None,
) -> str:
    """dcgm-exporter's /metrics text for the GPUs of `description` and the fields of
    `counters_csv`. `totals` holds the time-accumulated counters by GPU UUID (violations in
    us, energy in mJ: Totals.advance); `visible` the host GPU indexes this exporter sees."""
    counters = parse_counters(counters_csv)
    ctx = Context(description, totals or {})
    gpus = visible_gpus(description, visible)
    labels = [c for c in counters if c.kind == "label"]
    rendered = []
    for index, (minor, gpu) in enumerate(gpus):
        extra = {c.field: LABELS[c.field](description, gpu) for c in labels if c.field in LABELS}
        rendered.append((gpu, gpu_labels(index, minor, gpu, hostname, extra)))
    lines: list[str] = []
    for counter in counters:
        if counter.kind != "label":
            lines += _family(counter, rendered, ctx)
    return "\n".join(lines) + "\n" if lines else ""


def _family(counter: Counter, rendered: list[tuple[dict, str]], ctx: Context) -> list[str]:
    """HELP, TYPE and one sample per GPU that has a value (none at all: nothing)."""
    value_of = FIELDS[counter.field]
    samples = []
    for gpu, label_text in rendered:
        try:
            samples.append(f"{counter.field}{label_text} {_number(value_of(gpu, ctx))}")
        except Blank:
            continue
    if not samples:
        return []
    return [
        f"# HELP {counter.field} {counter.help}",
        f"# TYPE {counter.field} {counter.kind}",
    ] + samples


# --- accumulated counters -----------------------------------------------------------------


class Totals:
    """Counters that grow with time while a condition holds, per GPU UUID: each violation
    counter (us spent with its clock event reason set) and the energy (power x time, mJ)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, dict[str, float]] = {}
        self.last: float | None = None
        self.previous: dict[str, dict] = {}

    def advance(self, host: dict, now: float) -> dict[str, dict[str, int]]:
        """Add the time since the last call, under the state seen then; returns a snapshot."""
        with self.lock:
            elapsed = 0.0 if self.last is None else max(0.0, now - self.last)
            for uuid, gpu in self.previous.items():
                self._add(self.values.setdefault(uuid, {}), gpu, elapsed)
            self.previous = {g.get("uuid", ""): g for g in host.get("gpus", [])}
            self.last = now
            return {u: {k: int(v) for k, v in vals.items()} for u, vals in self.values.items()}

    @staticmethod
    def _add(values: dict[str, float], gpu: dict, elapsed: float) -> None:
        bits = int(gpu.get("throttle_reasons") or 0)
        for name, mask in VIOLATIONS.items():
            values[name] = values.get(name, 0.0) + (elapsed * 1e6 if bits & mask else 0.0)
        power = gpu.get("power_mw") if isinstance(gpu.get("power_mw"), int) else 0
        values["energy_mj"] = values.get("energy_mj", 0.0) + power * elapsed


# --- where the description is -------------------------------------------------------------


class NoGpu(Exception):
    """No GPU description: what NVML initialisation fails on."""


def locate(environ: dict[str, str], view: Path = CONTAINER_VIEW) -> tuple[Path, list[int] | None]:
    """The description file and the host GPU indexes this exporter sees (None: all);
    NoGpu when there is none. In a container: the hook's view.json names the file in the
    mounted host directory and the visible GPUs (an older hook's copy, gpus.json, is
    used when that is all there is: it does not follow later faults)."""
    if environ.get(ENV):
        return Path(environ[ENV]), None
    try:
        seen = json.loads((view / "view.json").read_text())
        mounted = view / "host" / seen["description"]
        if mounted.is_file():
            return mounted, seen["visible"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for path in (view / "gpus.json", Path(HOST_DESCRIPTION)):
        if path.is_file():
            return path, None
    raise NoGpu("no GPU description")


def load(path: Path) -> dict:
    """The description as JSON; NoGpu when it is missing or not a description."""
    try:
        host = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NoGpu(f"{path}: {exc}") from None
    if not isinstance(host, dict) or not isinstance(host.get("gpus"), list):
        raise NoGpu(f"{path}: not a GPU description")
    return host


# --- HTTP ---------------------------------------------------------------------------------


def log(level: str, message: str) -> None:
    """One logrus-style line on stderr, as dcgm-exporter 4.2 logs."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f'time="{stamp}" level={level} msg="{message}"', file=sys.stderr, flush=True)


@dataclass
class App:
    """The server's state: the counters file, where the GPUs are, accumulated totals."""

    counters_csv: str
    description: Path
    visible: list[int] | None
    hostname: str
    totals: Totals

    def metrics(self) -> str:
        host = load(self.description)
        snapshot = self.totals.advance(host, time.monotonic())
        return render_metrics(
            host, self.counters_csv, hostname=self.hostname, totals=snapshot, visible=self.visible
        )


class Handler(BaseHTTPRequestHandler):
    """GET /metrics and /health; nothing else."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        app: App = self.server.app  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                self.respond(200, app.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            except NoGpu as exc:
                log("error", f"Failed to collect metrics; err: {exc}")
                self.respond(500, "Failed to collect metrics\n", "text/plain")
        elif path == "/health":
            self.respond(200, "OK", "text/plain")
        else:
            self.respond(404, "404 page not found\n", "text/plain; charset=utf-8")

    def respond(self, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """dcgm-exporter logs no access lines."""


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer without the reverse DNS lookup at bind."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App):
        self.app = app
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


# --- command line -------------------------------------------------------------------------


USAGE = """\
NAME:
   dcgm-exporter - Generates GPU metrics in the prometheus format (gpufleet STAND-IN)

USAGE:
   dcgm-exporter [options]

OPTIONS:
   --collectors value, -f value  Path to the file, that contains the DCGM fields to collect
                                 (default: "/etc/dcgm-exporter/default-counters.csv")
   --address value, -a value     Address (default: ":9400")
   --no-hostname, -n             Omit the hostname information from the output
   --help, -h                    show help
"""


@dataclass
class Options:
    collectors: str
    address: str
    no_hostname: bool


def parse_args(argv: list[str], environ: dict[str, str]) -> Options:
    """The dcgm-exporter flags the stand-in honours; any other flag stops it, as urfave/cli's
    `flag provided but not defined` does (exit 1). `--help` prints usage, exit 0."""
    opts = Options(
        environ.get("DCGM_EXPORTER_COLLECTORS") or DEFAULT_COLLECTORS,
        environ.get("DCGM_EXPORTER_LISTEN") or DEFAULT_ADDRESS,
        environ.get("DCGM_EXPORTER_NO_HOSTNAME", "").lower() in ("1", "true"),
    )
    args = list(argv)
    while args:
        token = args.pop(0)
        name, eq, value = token.partition("=")
        if name in ("-h", "--help"):
            print(f"{BANNER} {VERSION}\n{USAGE}")
            raise SystemExit(0)
        if name in ("-n", "--no-hostname"):
            opts.no_hostname = True
        elif name in ("-f", "--collectors", "-a", "--address"):
            if not eq:
                if not args:
                    _usage_error(f"flag needs an argument: {name}")
                value = args.pop(0)
            setattr(opts, "collectors" if name in ("-f", "--collectors") else "address", value)
        else:
            _usage_error(f"flag provided but not defined: {name}")
    return opts


def _usage_error(message: str) -> None:
    print(f"Incorrect Usage: {message}\n\n{USAGE}", file=sys.stderr)
    raise SystemExit(1)


def bind_address(address: str) -> tuple[str, int]:
    """Go's `:9400` / `127.0.0.1:9400` / `[::]:9400` form."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def hostname(environ: dict[str, str], omitted: bool) -> str:
    """The Hostname label: $NODE_NAME, else the container's host name (as dcgm-exporter)."""
    if omitted:
        return ""
    return environ.get("NODE_NAME") or socket.gethostname()


def fail(message: str) -> int:
    log("fatal", message)
    return 1


def make_app(opts: Options, environ: dict[str, str]) -> App:
    """The counters and the GPUs, checked at start as the real exporter does (SystemExit)."""
    try:
        counters_csv = Path(opts.collectors).read_text()
        parse_counters(counters_csv)
    except OSError as exc:
        raise SystemExit(fail(f"open {opts.collectors}: {exc.strerror.lower()}")) from None
    except ConfigError as exc:
        raise SystemExit(fail(str(exc))) from None
    try:
        path, visible = locate(environ)
        load(path)
    except NoGpu:
        print("Error: Failed to initialize NVML", file=sys.stderr, flush=True)
        raise SystemExit(fail("Error starting nv-hostengine: DCGM initialization error")) from None
    return App(counters_csv, path, visible, hostname(environ, opts.no_hostname), Totals())


def _on_sigterm(_signum: int, _frame: object) -> None:
    """docker stop: as PID 1 an unhandled SIGTERM would be ignored."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    opts = parse_args(sys.argv[1:] if argv is None else argv, environ)
    log("info", "Starting dcgm-exporter")
    log("info", f"{BANNER} {VERSION}")
    app = make_app(opts, environ)
    log("info", "DCGM successfully initialized!")
    log("info", f"Collecting DCGM Fields from {opts.collectors}")
    try:
        server = Server(bind_address(opts.address), app)
    except OSError as exc:
        return fail(f"listen tcp {opts.address}: {exc.strerror}")
    signal.signal(signal.SIGTERM, _on_sigterm)
    log("info", f"Starting webserver on {opts.address}")
    try:
        server.serve_forever(poll_interval=60)
    except KeyboardInterrupt:
        log("info", "Received signal; shutting down")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
