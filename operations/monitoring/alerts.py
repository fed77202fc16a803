"""The alert rules the monitoring group's Prometheus evaluates: one table, ``ALERTS``, and the
rules file written from it (``rules_text``), one group ``gpufleet``.

Every alert has a ``for:`` (how long the condition must hold before it fires: a lab sets one
short ``monitoring_alert_for`` for all), a ``severity`` label (``critical``: serving is down
or the GPU's results can no longer be trusted, act now; ``warning``: degraded or about to be,
act within the day) and two annotations: ``summary`` (what, where, templated with the
series' labels) and ``runbook`` (what the on-call engineer does, one line).

The series come from the three scrape jobs (operations/monitoring/targets.py): ``node``
(node-exporter), ``vllm`` (each vLLM server's /metrics), ``dcgm`` (dcgm-exporter, with the
counters of operations/monitoring/dcgm-counters.csv). Every target carries ``gpufleet_host``,
so every alert names its host; DCGM series carry ``gpu`` and ``UUID``, so GPU alerts name the
GPU. Names are the real exporters' (vLLM v0.11, dcgm-exporter 4.x with DCGM 4): the
stand-ins serve the same ones, and a test checks every name in ``metric_names()`` exists in
their /metrics.

The thresholds follow the verify checks where both judge the same thing: fatal Xids are
``FATAL_XIDS`` (the default of ``gpu_fatal_xids``), the temperature margin is the default of
``gpu_temperature_margin_c`` and the slowdown bits are operations/driver/health.py's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from operations.config.model import FATAL_XIDS, GpuConfig
from operations.driver.health import SLOWDOWN_REASONS

GROUP = "gpufleet"
SEVERITIES = ("critical", "warning")
# Series Prometheus makes itself for every target; no exporter serves them on /metrics.
PROMETHEUS_METRICS = frozenset({"up"})

# A GPU this close (degrees C) to its slowdown temperature alerts: the verify check's margin.
TEMPERATURE_MARGIN_C = GpuConfig.model_fields["temperature_margin_c"].default
# Used only where dcgm-exporter serves no DCGM_FI_DEV_SLOWDOWN_TEMP for a GPU (a counters file
# without it, a GPU that does not report it): 85 C is 2 below the H100's slowdown (87 C) and
# below every current data-centre GPU's, so it errs towards alerting early.
FALLBACK_SLOWDOWN_ALERT_C = 85
# How long the fatal-Xid rule remembers a fatal code. DCGM_FI_DEV_XID_ERRORS holds only the
# LAST Xid (and dcgm-exporter labels it err_code, so a new Xid is a new series): a harmless
# Xid 13 after an Xid 79 would otherwise resolve the alert before anyone saw it.
XID_MEMORY = "1h"
# Filesystems that are not disks (memory, container layers, images, kernel views).
NOT_DISKS = "tmpfs|devtmpfs|ramfs|overlay|squashfs|iso9660|nsfs|efivarfs|fuse.*"


@dataclass(frozen=True)
class Alert:
    """One alerting rule: name, PromQL, for:, severity and the two annotations."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    runbook: str


def xid_expr(codes: Iterable[int] = FATAL_XIDS) -> str:
    """A fatal Xid now or within XID_MEMORY on a GPU; the value is the Xid code.

    DCGM reports the last Xid as the field's value (a gauge, not a count), so the rule
    compares the value with each fatal code, inside a subquery that keeps it for XID_MEMORY.
    The subquery samples once a minute (cheap over an hour); the same comparison on the
    current value, before it, sees a new Xid at the next evaluation instead of the next
    minute. Both sides carry the series' labels, so the alert is one series either way.
    """
    tests = "\n  or ".join(f"DCGM_FI_DEV_XID_ERRORS == {code}" for code in sorted(set(codes)))
    return f"(\n  {tests}\n)\nor max_over_time((\n  {tests}\n)[{XID_MEMORY}:1m])"


def _bit(metric: str, bit: int) -> str:
    """PromQL has no bitwise operators: bit ``bit`` (a power of two) of ``metric`` is set."""
    return f"floor({metric} / {bit}) % 2 == 1"


def slowdown_expr() -> str:
    """The clock event reasons bitmask (value kept) where a slowdown bit is set."""
    metric = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
    bits = "\n  or ".join(_bit(metric, bit) for bit in sorted(SLOWDOWN_REASONS))
    return f"{metric}\nand (\n  {bits}\n)"


def _reasons() -> str:
    return ", ".join(f"{bit} {name}" for bit, name in sorted(SLOWDOWN_REASONS.items()))


GPU = "GPU {{ $labels.gpu }} ({{ $labels.UUID }}) of {{ $labels.gpufleet_host }}"
DRAIN = "drain the host (stop its vLLM servers or take it out of the load balancer)"
SMI = "nvidia-smi -i {{ $labels.gpu }}"

HOST_DOWN = Alert(
    name="HostDown",
    expr='up{job="node"} == 0',
    for_="2m",
    severity="critical",
    summary="Host {{ $labels.gpufleet_host }} is down: node-exporter at {{ $labels.instance }} "
    "does not answer Prometheus.",
    runbook="`ssh` to the host: no answer means power, network or kernel (look at its BMC "
    "console); an answer means node-exporter stopped: `systemctl status "
    "prometheus-node-exporter`, `journalctl -u prometheus-node-exporter`, then redeploy: "
    "`pyinfra INVENTORY deploy.py --limit {{ $labels.gpufleet_host }} "
    "--data deploy_layers=monitoring`.",
)
"""Two minutes: eight missed 15 s scrapes, longer than a reboot's network blip, shorter than
anyone would want a host gone unnoticed."""

VLLM_DOWN = Alert(
    name="VllmServerDown",
    expr='up{job="vllm"} == 0',
    for_="2m",
    severity="critical",
    summary="vLLM server {{ $labels.gpufleet_instance }} ({{ $labels.model }}) on "
    "{{ $labels.gpufleet_host }} does not answer /metrics at {{ $labels.instance }}.",
    runbook="On the host: `docker ps -a --filter name=vllm-{{ $labels.gpufleet_instance }}` and "
    "`docker logs --tail 200 vllm-{{ $labels.gpufleet_instance }}` (CUDA out of memory, a "
    "failed model download, an Xid), `nvidia-smi`; then `pytest tests/verify --inventory "
    "INVENTORY -m vllm --limit {{ $labels.gpufleet_host }}` and redeploy: `pyinfra INVENTORY "
    "deploy.py --limit {{ $labels.gpufleet_host }} --data deploy_layers=vllm`.",
)
"""Two minutes, like a host: vLLM's own restart after a crash takes longer than that to load a
model, so a crash loop fires rather than flapping."""

ENGINE_STUCK = Alert(
    name="VllmEngineStuck",
    expr="sum by (job, instance, gpufleet_host, gpufleet_instance, model) "
    "(vllm:num_requests_waiting) > 0\n"
    "and on (job, instance)\n"
    "sum by (job, instance) (increase(vllm:generation_tokens_total[5m])) == 0",
    for_="1m",
    severity="critical",
    summary="vLLM server {{ $labels.gpufleet_instance }} on {{ $labels.gpufleet_host }} has "
    "{{ $value }} requests waiting and generated no token in 5 minutes.",
    runbook="The engine is hung (a stuck NCCL collective, a dead worker, a GPU fault): look for "
    "an Xid in `dmesg` and errors in `docker logs --tail 200 "
    "vllm-{{ $labels.gpufleet_instance }}`, then `docker restart "
    "vllm-{{ $labels.gpufleet_instance }}`; if it hangs again, drain the host and check its GPUs.",
)
"""Requests queued yet no token for 5 minutes (the issue's definition; the expression looks
back 5 minutes itself): no healthy server goes 5 minutes without a token while it has work.
The ``for:`` adds a minute so that one late scrape of the counter does not page."""

KV_CACHE_FULL = Alert(
    name="VllmKvCacheFull",
    expr="vllm:kv_cache_usage_perc > 0.95",
    for_="10m",
    severity="warning",
    summary="vLLM server {{ $labels.gpufleet_instance }} on {{ $labels.gpufleet_host }} uses "
    "{{ $value | humanizePercentage }} of its KV cache.",
    runbook="A full KV cache makes vLLM queue and preempt requests (latency rises): see "
    "`curl -s http://{{ $labels.instance }}/metrics | grep -E 'kv_cache|requests_(running|"
    "waiting)|preempt'`; add a "
    "replica or host, or give the cache more room (vllm_gpu_memory_utilization up, "
    "vllm_max_model_len down, or --max-num-seqs down in vllm_extra_args) and redeploy.",
)
"""Above 95 % vLLM starts preempting running requests to make room; for 10 minutes, because a
burst filling it briefly is the cache doing its job, not a capacity problem."""

FATAL_XID = Alert(
    name="GpuFatalXid",
    expr=xid_expr(),
    for_="1m",
    severity="critical",
    summary=f"{GPU} reported fatal Xid {{{{ $value }}}}.",
    runbook=f"The GPU is unfit to serve until reset: {DRAIN}, read the Xid's message in "
    f"`dmesg | grep -i xid`, then `{SMI} -r` or reboot; a fatal Xid again after the reset "
    "means hardware: collect `nvidia-bug-report.sh` and open an RMA.",
)
"""Fatal codes are FATAL_XIDS: memory, bus, NVLink and GSP faults (48, 63, 64, 74, 79, 92, 94,
95, 119, 120), not application faults (13, 31, 43, 45). The value is sticky until the
exporter restarts, so a minute of ``for:`` costs nothing and skips a stray sample."""

REMAP_PENDING = Alert(
    name="GpuRowRemapPending",
    expr="DCGM_FI_DEV_ROW_REMAP_PENDING > 0",
    for_="5m",
    severity="warning",
    summary=f"{GPU} has a memory row remap pending: it takes effect at the next GPU reset.",
    runbook=f"The GPU recorded a bad memory row and repairs it at reset: {DRAIN}, "
    f"`{SMI} -r` (or reboot), then `{SMI} -q -d ROW_REMAPPER` must say Pending: No.",
)
"""A remap waits for a reset (Xid 63 was logged); the GPU still works but runs without that
repair. A warning: reset it at the next drain, within the day."""

REMAP_FAILURE = Alert(
    name="GpuRowRemapFailure",
    expr="DCGM_FI_DEV_ROW_REMAP_FAILURE > 0",
    for_="1m",
    severity="critical",
    summary=f"{GPU} failed to remap a memory row: its memory can no longer be repaired.",
    runbook=f"Remapping failed (Xid 64, no spare rows left): {DRAIN}, confirm with "
    f"`{SMI} -q -d ROW_REMAPPER`, take the GPU out of service and open an RMA with "
    "`nvidia-bug-report.sh`.",
)
"""Any failure: the GPU has no spare rows left, a reset does not help."""

UNCORRECTED_ECC = Alert(
    name="GpuUncorrectableEccErrors",
    expr="DCGM_FI_DEV_ECC_DBE_VOL_TOTAL > 0",
    for_="1m",
    severity="critical",
    summary=f"{GPU} has {{{{ $value }}}} uncorrectable ECC errors since the driver loaded.",
    runbook=f"Results from this GPU may be corrupt: {DRAIN}, `{SMI} -q -d ECC,ROW_REMAPPER`, "
    f"then `{SMI} -r` (or reboot) to apply the row remap; errors again after the reset mean "
    "an RMA.",
)
"""The volatile count, not its increase: it is cleared by the GPU reset that is also the fix,
so an error from before Prometheus first scraped alerts as well."""

TEMPERATURE = Alert(
    name="GpuTemperatureNearSlowdown",
    expr="DCGM_FI_DEV_GPU_TEMP\n"
    ">= on (job, instance, UUID) group_left ()\n"
    f"  (DCGM_FI_DEV_SLOWDOWN_TEMP - {TEMPERATURE_MARGIN_C})\n"
    f"or (DCGM_FI_DEV_GPU_TEMP >= {FALLBACK_SLOWDOWN_ALERT_C}\n"
    "  unless on (job, instance, UUID) DCGM_FI_DEV_SLOWDOWN_TEMP)",
    for_="5m",
    severity="warning",
    summary=f"{GPU} is at {{{{ $value }}}} C, near its slowdown temperature.",
    runbook="The GPU will soon halve its clocks: check the host's fans, inlet air and "
    f"`ipmitool sdr type Fan` / `type Temperature`, and `{SMI} -q -d TEMPERATURE` (GPU "
    f"Slowdown Temp). The rule fires {TEMPERATURE_MARGIN_C} C below that, or at "
    f"{FALLBACK_SLOWDOWN_ALERT_C} C where DCGM reports none.",
)
"""The margin is gpu_temperature_margin_c's default (5 C), as the verify check applies it;
5 minutes, because a GPU this hot for that long is a cooling problem, not a load spike."""

THROTTLING = Alert(
    name="GpuClocksSlowdown",
    expr=slowdown_expr(),
    for_="10m",
    severity="warning",
    summary=f"{GPU} is slowed down by hardware or heat (clock event reasons {{{{ $value }}}}).",
    runbook=f"Bits: {_reasons()}. Thermal: check cooling as for a hot GPU; hardware slowdown "
    "or power brake: check the power supplies and the BMC's event log (`ipmitool sel list`); "
    f"`{SMI} -q -d PERFORMANCE` shows the active reasons.",
)
"""Slowdown bits only (operations/driver/health.py's): idle, application clocks, software
power cap and sync boost are normal operation. Ten minutes, because a short slowdown during a
power or clock change is normal too; one that persists halves the host's throughput."""

DISK_FULL = Alert(
    name="DiskNearlyFull",
    expr=f'node_filesystem_avail_bytes{{fstype!~"{NOT_DISKS}"}}\n'
    f'/ node_filesystem_size_bytes{{fstype!~"{NOT_DISKS}"}} < 0.10\n'
    "and node_filesystem_readonly == 0",
    for_="15m",
    severity="warning",
    summary="{{ $labels.mountpoint }} on {{ $labels.gpufleet_host }} has "
    "{{ $value | humanizePercentage }} of its space left.",
    runbook="On the host: `df -h {{ $labels.mountpoint }}`, `docker system df` (old vLLM images "
    "are ~10 GB: `docker image prune`), the Hugging Face cache (vllm_hf_cache_dir: old "
    "models), `journalctl --vacuum-size=1G`; a full disk stops image pulls and model "
    "downloads.",
)
"""Under 10 % free, writable real filesystems only; 15 minutes, so that a model download that
a cleanup follows does not page. Memory, overlay and image filesystems are not disks."""

ALERTS: tuple[Alert, ...] = (
    HOST_DOWN,
    VLLM_DOWN,
    ENGINE_STUCK,
    KV_CACHE_FULL,
    FATAL_XID,
    REMAP_PENDING,
    REMAP_FAILURE,
    UNCORRECTED_ECC,
    TEMPERATURE,
    THROTTLING,
    DISK_FULL,
)


def _scalar(value: str) -> str:
    """A YAML scalar: JSON's double-quoted string (valid YAML, every character escaped)."""
    return json.dumps(value)


def _block(value: str, indent: str) -> list[str]:
    """A YAML literal block (``|-``) for a PromQL expression: read as written, no escapes."""
    return ["|-", *(f"{indent}{line}" for line in value.splitlines())]


def _rule_lines(alert: Alert, alert_for: str | None) -> list[str]:
    block = _block(alert.expr, " " * 10)
    return [
        f"      - alert: {alert.name}",
        f"        expr: {block[0]}",
        *block[1:],
        f"        for: {alert_for or alert.for_}",
        "        labels:",
        f"          severity: {alert.severity}",
        "        annotations:",
        f"          summary: {_scalar(alert.summary)}",
        f"          runbook: {_scalar(alert.runbook)}",
    ]


def render_rules(alerts: Iterable[Alert], alert_for: str | None = None) -> str:
    """A Prometheus rules document of one group, GROUP, with ``alerts`` in order."""
    lines = [
        "# Written by gpufleet (operations/monitoring/alerts.py): changes here are replaced.",
        "groups:",
        f"  - name: {GROUP}",
        "    rules:",
    ]
    for alert in alerts:
        lines += _rule_lines(alert, alert_for)
    return "\n".join(lines) + "\n"


def rules_text(alert_for: str | None = None, fatal_xids: Iterable[int] | None = None) -> str:
    """The rules file of ALERTS; ``alert_for`` replaces every rule's ``for:`` (a lab's short
    one), ``fatal_xids`` the fatal Xid codes (a site's ``gpu_fatal_xids``)."""
    alerts = ALERTS
    if fatal_xids is not None:
        fatal = replace(FATAL_XID, expr=xid_expr(fatal_xids))
        alerts = tuple(fatal if alert is FATAL_XID else alert for alert in ALERTS)
    return render_rules(alerts, alert_for)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_NAME = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
     "group_right", "offset", "inf", "nan", "atan2"}
)  # fmt: skip


def expr_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in matchers or by/on lists), strings, durations or numbers."""
    text = _STRING.sub(" ", expr)
    for pattern in (_MATCHERS, _RANGES, _LABEL_LISTS, _OFFSET):
        text = pattern.sub(" ", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def metric_names() -> set[str]:
    """Every metric the rules query (PROMETHEUS_METRICS among them: ``up``)."""
    return set().union(*(expr_metric_names(alert.expr) for alert in ALERTS))
