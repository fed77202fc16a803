"""The STAND-IN dcgm-exporter (tests/standins/dcgm) and the counters CSV the deploy gives
the real one (operations/monitoring/dcgm-counters.csv).

render_metrics is checked against the STAND-IN GPU descriptions: healthy H100 and HGX
values, every fault of tests/standins/gpu FAULTS in its DCGM metric (and in no other),
only the CSV's fields served. The server runs as a local process (no root, no Docker):
a fault written after its start shows at the next scrape, and with no GPU it fails to start
as the real one does. One `lab` test builds the image and runs it on the controller's
engine (skipped when no engine answers)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lab.engine import docker, engine_answers
from tests.standins import gpu
from tests.standins.dcgm import image, server
from tests.standins.vllm import image as vllm_image

ROOT = Path(__file__).resolve().parents[2]
CSV_PATH = ROOT / "operations/monitoring/dcgm-counters.csv"
CSV = CSV_PATH.read_text()
SERVER = ROOT / "tests/standins/dcgm/server.py"
SAMPLE = re.compile(r"^(?P<name>[A-Z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")

# DCGM field ids (dcgm_fields.h, NVIDIA/DCGM; go-dcgm const_fields.go) of every field the
# CSV names: a misspelt name is not here, and the real exporter would refuse it at start.
DCGM_FIELD_IDS = {
    "DCGM_FI_DRIVER_VERSION": 1, "DCGM_FI_DEV_PERSISTENCE_MODE": 66,
    "DCGM_FI_DEV_SM_CLOCK": 100, "DCGM_FI_DEV_MEM_CLOCK": 101,
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 112, "DCGM_FI_DEV_MEMORY_TEMP": 140,
    "DCGM_FI_DEV_GPU_TEMP": 150, "DCGM_FI_DEV_POWER_USAGE": 155,
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 156, "DCGM_FI_DEV_SLOWDOWN_TEMP": 158,
    "DCGM_FI_DEV_SHUTDOWN_TEMP": 159, "DCGM_FI_DEV_FABRIC_MANAGER_STATUS": 170,
    "DCGM_FI_DEV_PCIE_TX_THROUGHPUT": 200, "DCGM_FI_DEV_PCIE_RX_THROUGHPUT": 201,
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 202, "DCGM_FI_DEV_GPU_UTIL": 203,
    "DCGM_FI_DEV_MEM_COPY_UTIL": 204, "DCGM_FI_DEV_ENC_UTIL": 206, "DCGM_FI_DEV_DEC_UTIL": 207,
    "DCGM_FI_DEV_XID_ERRORS": 230, "DCGM_FI_DEV_PCIE_LINK_GEN": 237,
    "DCGM_FI_DEV_PCIE_LINK_WIDTH": 238, "DCGM_FI_DEV_POWER_VIOLATION": 240,
    "DCGM_FI_DEV_THERMAL_VIOLATION": 241, "DCGM_FI_DEV_SYNC_BOOST_VIOLATION": 242,
    "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION": 243, "DCGM_FI_DEV_LOW_UTIL_VIOLATION": 244,
    "DCGM_FI_DEV_RELIABILITY_VIOLATION": 245, "DCGM_FI_DEV_FB_FREE": 251,
    "DCGM_FI_DEV_FB_USED": 252, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 310,
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 311, "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": 312,
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": 313, "DCGM_FI_DEV_RETIRED_SBE": 390,
    "DCGM_FI_DEV_RETIRED_DBE": 391, "DCGM_FI_DEV_RETIRED_PENDING": 392,
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 393, "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 394,
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": 395, "DCGM_FI_DEV_ROW_REMAP_PENDING": 396,
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL": 409,
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL": 419,
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL": 429,
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL": 439,
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": 449, "DCGM_FI_DEV_VGPU_LICENSE_STATUS": 526,
}  # fmt: skip
# The health counters upstream's default-counters.csv leaves commented out (issue 17)
HEALTH = {
    "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_PENDING", "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_DEV_POWER_VIOLATION", "DCGM_FI_DEV_THERMAL_VIOLATION",
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION", "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",
    "DCGM_FI_DEV_LOW_UTIL_VIOLATION", "DCGM_FI_DEV_RELIABILITY_VIOLATION",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
}  # fmt: skip


def samples(text: str) -> dict[tuple[str, str], str]:
    """{(metric, UUID): value} of a /metrics text; every line must parse."""
    found = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) DCGM_FI_\w+ \S", line), line
            continue
        match = SAMPLE.match(line)
        assert match, line
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        found[(match["name"], labels["UUID"])] = match["value"]
    return found


def labels_of(text: str, metric: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith(metric + "{")]
    return [dict(re.findall(r'(\w+)="([^"]*)"', line)) for line in lines]


def uuid(description: dict, index: int = -1) -> str:
    return description["gpus"][index]["uuid"]


# --- the counters CSV ---------------------------------------------------------------------


def test_the_csv_names_only_real_dcgm_fields_in_upstream_format():
    counters = server.parse_counters(CSV)
    assert {c.field for c in counters} == set(DCGM_FIELD_IDS)
    assert all(c.kind in ("gauge", "counter", "label") and c.help for c in counters)
    assert [c.kind for c in counters if c.field == "DCGM_FI_DRIVER_VERSION"] == ["label"]
    for line in CSV.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.count(",") == 2, line  # upstream: "always make sure ... 2 commas"


def test_the_csv_enables_the_health_counters():
    enabled = {c.field for c in server.parse_counters(CSV)}
    assert enabled >= HEALTH
    assert "# DCGM_FI_DEV_XID_ERRORS" not in CSV  # not left commented out


def test_the_stand_in_refuses_what_dcgm_exporter_refuses():
    with pytest.raises(server.ConfigError, match="Could not find DCGM field: DCGM_FI_DEV_TYPO"):
        server.parse_counters("DCGM_FI_DEV_TYPO, gauge, oops\n")
    with pytest.raises(server.ConfigError, match="wrong number of fields"):
        server.parse_counters("DCGM_FI_DEV_GPU_TEMP, gauge, a help, with a comma\n")
    with pytest.raises(server.ConfigError, match="metric type"):
        server.parse_counters("DCGM_FI_DEV_GPU_TEMP, gauges, GPU temperature\n")


# --- healthy GPUs -------------------------------------------------------------------------


def test_healthy_h100_values_and_labels():
    h100 = gpu.load("h100")
    text = server.render_metrics(h100, CSV, hostname="gpufleet-lab-gpu-h100")
    got = samples(text)
    u = uuid(h100)
    assert got[("DCGM_FI_DEV_GPU_TEMP", u)] == "34"
    assert got[("DCGM_FI_DEV_SLOWDOWN_TEMP", u)] == "87"
    assert got[("DCGM_FI_DEV_POWER_USAGE", u)] == "71.000000"  # a double: Go's %f
    assert got[("DCGM_FI_DEV_SM_CLOCK", u)] == "1980"
    assert got[("DCGM_FI_DEV_FB_FREE", u)] == "81559" and got[("DCGM_FI_DEV_FB_USED", u)] == "0"
    assert got[("DCGM_FI_DEV_PCIE_LINK_WIDTH", u)] == "16"
    assert got[("DCGM_FI_DEV_PERSISTENCE_MODE", u)] == "1"
    for name in HEALTH - {n for n in HEALTH if "NVLINK" in n}:
        assert got[(name, u)] == "0", name
    # a PCIe H100: no NVLink, no page retirement (it remaps rows): DCGM blanks, no sample
    assert not [key for key in got if "NVLINK" in key[0] or "RETIRED" in key[0]]
    assert got[("DCGM_FI_DEV_FABRIC_MANAGER_STATUS", u)] == "0"  # not supported
    assert labels_of(text, "DCGM_FI_DEV_GPU_TEMP") == [{
        "gpu": "0", "UUID": u, "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "gpufleet-lab-gpu-h100",
        "DCGM_FI_DRIVER_VERSION": "580.159.04",
    }]  # fmt: skip
    first = text.splitlines()[:3]
    assert first[0] == "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz)."
    assert first[1] == "# TYPE DCGM_FI_DEV_SM_CLOCK gauge"
    assert first[2].startswith('DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-')


def test_healthy_hgx_has_eight_gpus_with_nvlink_and_fabric():
    hgx = gpu.load("hgx8")
    text = server.render_metrics(hgx, CSV)
    got = samples(text)
    assert [lab["gpu"] for lab in labels_of(text, "DCGM_FI_DEV_GPU_TEMP")] == list("01234567")
    assert "Hostname" not in labels_of(text, "DCGM_FI_DEV_GPU_TEMP")[0]  # none given (-n)
    for index in range(8):
        u = uuid(hgx, index)
        assert got[("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", u)] == "0"
        assert got[("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", u)] == "0"
        assert got[("DCGM_FI_DEV_FABRIC_MANAGER_STATUS", u)] == "3"  # success


def test_visible_gpus_are_renumbered_and_keep_their_device():
    hgx = gpu.load("hgx8")
    text = server.render_metrics(hgx, CSV, visible=[2, 5])
    seen = labels_of(text, "DCGM_FI_DEV_GPU_TEMP")
    assert [(s["gpu"], s["device"], s["UUID"]) for s in seen] == [
        ("0", "nvidia2", uuid(hgx, 2)),
        ("1", "nvidia5", uuid(hgx, 5)),
    ]


# --- every fault in its metric ------------------------------------------------------------

# fault -> {metric: value on the faulty GPU (the last)}; nothing else may change
FAULT_METRICS = {
    "ecc_uncorrected": {"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": "1", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": "1"},
    "retired_page_pending": {
        "DCGM_FI_DEV_RETIRED_PENDING": "1", "DCGM_FI_DEV_RETIRED_SBE": "0",
        "DCGM_FI_DEV_RETIRED_DBE": "0",
    },
    "row_remap_pending": {"DCGM_FI_DEV_ROW_REMAP_PENDING": "1"},
    "row_remap_failure": {"DCGM_FI_DEV_ROW_REMAP_FAILURE": "1"},
    "pcie_x8": {"DCGM_FI_DEV_PCIE_LINK_WIDTH": "8"},
    "thermal_throttle": {
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": "64", "DCGM_FI_DEV_SM_CLOCK": "990",
        "DCGM_FI_DEV_THERMAL_VIOLATION": "2500000",  # 2.5 s with the reason set, in us
    },
    "nvlink_down": {"DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL": "1"},
    "fabric_incomplete": {"DCGM_FI_DEV_FABRIC_MANAGER_STATUS": "1"},  # not started
    "xid_79": {"DCGM_FI_DEV_XID_ERRORS": "79"},
    "persistence_off": {"DCGM_FI_DEV_PERSISTENCE_MODE": "0"},
    "cuda_older": {},  # DCGM shows the CUDA version in no field of this CSV
}  # fmt: skip


def scrape_twice(description: dict, sick: dict) -> str:
    """The text of a second scrape 2.5 s after a first one that saw `sick`."""
    totals = server.Totals()
    totals.advance(sick, 100.0)
    return server.render_metrics(sick, CSV, totals=totals.advance(sick, 102.5))


@pytest.mark.parametrize("variant", gpu.VARIANTS)
def test_every_fault_shows_in_its_metric_and_no_other(variant):
    healthy = gpu.load(variant)
    faults = set(gpu.faults_for(healthy)) - {"gpu_missing", "driver_branch"}
    assert faults <= set(FAULT_METRICS)
    before = samples(scrape_twice(healthy, healthy))
    for fault in sorted(faults):
        after = samples(scrape_twice(healthy, gpu.with_fault(healthy, fault)))
        changed = {key: after.get(key) for key in before.keys() | after.keys()
                   if before.get(key) != after.get(key)}  # fmt: skip
        expected = {(m, uuid(healthy)): v for m, v in FAULT_METRICS[fault].items()}
        assert changed == expected, fault


def test_a_missing_gpu_loses_its_series():
    hgx = gpu.load("hgx8")
    text = server.render_metrics(gpu.with_fault(hgx, "gpu_missing"), CSV)
    assert len(labels_of(text, "DCGM_FI_DEV_GPU_TEMP")) == 7
    assert uuid(hgx) not in text


def test_another_driver_shows_in_the_driver_label():
    h100 = gpu.load("h100")
    text = server.render_metrics(gpu.with_fault(h100, "driver_branch"), CSV)
    assert {lab["DCGM_FI_DRIVER_VERSION"] for lab in labels_of(text, "DCGM_FI_DEV_GPU_TEMP")} == {
        gpu.OTHER_DRIVER
    }


def test_violations_grow_only_while_their_reason_is_set():
    h100 = gpu.load("h100")
    hot = gpu.with_fault(h100, "thermal_throttle")
    totals = server.Totals()
    totals.advance(hot, 0.0)
    assert totals.advance(hot, 1.0)[uuid(h100)]["DCGM_FI_DEV_THERMAL_VIOLATION"] == 1_000_000
    healed = totals.advance(h100, 3.0)[uuid(h100)]  # hot from 1.0 to 3.0 still
    assert healed["DCGM_FI_DEV_THERMAL_VIOLATION"] == 3_000_000
    later = totals.advance(h100, 10.0)[uuid(h100)]
    assert later["DCGM_FI_DEV_THERMAL_VIOLATION"] == 3_000_000  # a counter: kept, not reset
    assert later["DCGM_FI_DEV_POWER_VIOLATION"] == 0
    assert later["energy_mj"] == 71_000 * 10  # 71 W for 10 s


# --- only the CSV's fields ----------------------------------------------------------------


def test_only_the_fields_of_the_csv_are_served():
    small = "# a comment, with commas,,\nDCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n"
    small += "DCGM_FI_DEV_XID_ERRORS, gauge, Value of the last XID error encountered.\n"
    text = server.render_metrics(gpu.load("hgx8"), small)
    names = {key[0] for key in samples(text)}
    assert names == {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_XID_ERRORS"}
    assert "DCGM_FI_DRIVER_VERSION" not in text  # not a label unless the CSV says so
    assert "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C)." in text


# --- the server as a process --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_server(tmp_path, args, env_extra):
    env = {"PATH": os.environ["PATH"], **env_extra}
    return subprocess.Popen(
        [sys.executable, str(SERVER), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def scrape(port: int, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                assert resp.headers["Content-Type"].startswith("text/plain")
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_fault_injected_after_the_start_shows_at_the_next_scrape(tmp_path):
    description = tmp_path / "gpus.json"
    description.write_text(gpu.dumps(gpu.load("h100")))
    port = free_port()
    proc = run_server(tmp_path, ["-f", str(CSV_PATH), "-a", f"127.0.0.1:{port}"],
                      {gpu.ENV: str(description), "NODE_NAME": "lab-gpu-h100"})  # fmt: skip
    try:
        u = uuid(gpu.load("h100"))
        first = samples(scrape(port))
        assert first[("DCGM_FI_DEV_ROW_REMAP_PENDING", u)] == "0"
        description.write_text(gpu.dumps(gpu.with_fault(gpu.load("h100"), "row_remap_pending")))
        text = scrape(port)
        assert samples(text)[("DCGM_FI_DEV_ROW_REMAP_PENDING", u)] == "1"
        assert labels_of(text, "DCGM_FI_DEV_GPU_TEMP")[0]["Hostname"] == "lab-gpu-h100"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert 'level=info msg="Starting dcgm-exporter"' in err


def test_with_no_gpu_it_fails_to_start_like_dcgm_exporter(tmp_path):
    proc = run_server(tmp_path, ["-f", str(CSV_PATH), "-a", f"127.0.0.1:{free_port()}"],
                      {gpu.ENV: str(tmp_path / "absent.json")})  # fmt: skip
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "Error: Failed to initialize NVML" in err
    assert 'level=fatal msg="Error starting nv-hostengine: DCGM initialization error"' in err


def test_a_bad_flag_or_csv_stops_it(tmp_path):
    proc = run_server(tmp_path, ["--frobnicate"], {})
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "flag provided but not defined: --frobnicate" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("DCGM_FI_DEV_NOPE, gauge, no such field\n")
    proc = run_server(tmp_path, ["-f", str(bad)], {gpu.ENV: str(gpu.HERE / "h100.json")})
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "Could not find DCGM field: DCGM_FI_DEV_NOPE" in err


def test_container_view_follows_the_hooks_view_json(tmp_path):
    host = tmp_path / "view/host"
    host.mkdir(parents=True)
    (host / "gpus.json").write_text(gpu.dumps(gpu.load("hgx8")))
    (tmp_path / "view/view.json").write_text('{"description": "gpus.json", "visible": [1]}')
    assert server.locate({}, tmp_path / "view") == (host / "gpus.json", [1])
    assert server.locate({gpu.ENV: "/x.json"}, tmp_path / "view") == (Path("/x.json"), None)


# --- the image ----------------------------------------------------------------------------


def test_image_names_itself_a_stand_in_and_keeps_the_vllm_one():
    assert image.IMAGE == "gpufleet-standin/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04-standin"
    assert image.IMAGE_CHANGES[0] == 'ENTRYPOINT ["python3", "/opt/standin/dcgm-exporter.py"]'
    assert "EXPOSE 9400" in image.IMAGE_CHANGES
    assert vllm_image.IMAGE == "gpufleet-standin/vllm-openai:0.11.0-standin"
    assert image.recipe().work_dir != vllm_image.vllm_recipe().work_dir


def test_recipe_hash_follows_the_server_and_the_csv(tmp_path, monkeypatch):
    first = image.recipe_hash()
    assert first == image.recipe_hash() != vllm_image.recipe_hash()
    copy = tmp_path / "dcgm-counters.csv"
    copy.write_text(CSV + "# changed\n")
    monkeypatch.setattr(image, "COUNTERS", copy)
    assert image.recipe_hash() != first


@pytest.mark.lab
def test_image_serves_on_the_controller_engine(tmp_path):
    if not engine_answers():
        pytest.skip("no Docker engine answers")
    image_id = image.ensure_image(ROOT, log=lambda _: None)
    name = f"gpufleet-standin-dcgm-test-{os.getpid()}"
    mounts = ["-v", f"{gpu.HERE}:/etc/gpufleet-standin:ro"]  # as a GPU host's description
    env = ["-e", f"{gpu.ENV}=/etc/gpufleet-standin/hgx8.json"]
    docker("run", "-d", "--name", name, "-p", "127.0.0.1::9400", *env, *mounts,
           image_id, "-f", "/etc/dcgm-exporter/default-counters.csv")  # fmt: skip
    try:
        port = int(docker("port", name, "9400").stdout.split()[0].rsplit(":", 1)[1])
        assert len(labels_of(scrape(port, timeout=30), "DCGM_FI_DEV_GPU_TEMP")) == 8
    finally:
        docker("rm", "-f", name, check=False)
    no_gpu = docker("run", "--rm", image_id, check=False, timeout=60)
    assert no_gpu.returncode == 1 and "Failed to initialize NVML" in no_gpu.stderr
    assert image_id in vllm_image.tar_identity(image.save_tar(ROOT, log=lambda _: None))[0]


def test_promtool_parses_the_text():
    """The real promtool parses it (its lint warnings, counters without _total and
    camelCase labels, are dcgm-exporter's own and expected)."""
    from tests.unit.test_standin_vllm_metrics import _promtool

    text = server.render_metrics(gpu.load("hgx8"), CSV, hostname="h")
    done = subprocess.run([_promtool(), "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    out = done.stdout + done.stderr
    assert "error while" not in out.lower() and "parsing error" not in out, out
    expected = ('should have "_total" suffix', "snake_case", "should not include type")
    assert all(any(e in line for e in expected) for line in out.splitlines() if line.strip())


# --- the lab's host data ------------------------------------------------------------------


def test_only_gpu_lab_hosts_get_the_stand_in_dcgm_image(tmp_path):
    from lab.state import inventory_hosts, make_state

    dcgm = {"image": image.IMAGE, "archive": str(tmp_path / "dcgm.tar")}
    state = make_state([("lab-1", "gpufleet-lab-1", 2221)], tmp_path / "k", tmp_path / "kh",
                       dcgm_standin=dcgm)  # fmt: skip
    state["hosts"].append({"name": "lab-gpu-h100", "container": "c", "port": 3221,
                           "variant": "h100"})  # fmt: skip
    data = dict(inventory_hosts(state))
    assert "monitoring_dcgm_image" not in data["lab-1"]
    assert data["lab-gpu-h100"]["monitoring_dcgm_image"] == image.IMAGE
    assert data["lab-gpu-h100"]["monitoring_dcgm_image_archive"] == dcgm["archive"]
    older = make_state([("lab-1", "gpufleet-lab-1", 2221)], tmp_path / "k", tmp_path / "kh")
    older["hosts"][0]["has_gpus"] = True
    assert "monitoring_dcgm_image" not in dict(inventory_hosts(older))["lab-1"]
