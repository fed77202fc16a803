"""The one table of well-known cloud GPU instance types: how many NVIDIA GPUs each has, and
which model. An inventory source sets ``host_gpu_count`` (and ``host_has_gpus``) from it for a
host whose data does not set them; a type not listed here sets nothing (no guess), so the
model's defaults apply.

Where each row comes from (checked 2026-12): AWS's accelerated-computing instance pages (GPU
count per size; g5, g6 and g6e share one shape: 1 GPU up to 16xlarge, 4 at 12xlarge and
24xlarge, 8 at 48xlarge); Google Cloud's GPU machine types (A2, A3: the ``-Ng`` suffix is the
number of GPUs attached); Azure's GPU-accelerated VM sizes (ND A100 v4, NDm A100 v4, ND H100
v5: 8 GPUs each).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuShape:
    """The GPUs of one instance type: how many, and the model (as the cloud names it)."""

    count: int
    model: str


def _sizes(family: str, model: str) -> dict[str, GpuShape]:
    """AWS's G5/G6/G6e shape: one GPU from xlarge to 16xlarge, 4 at 12xlarge and 24xlarge,
    8 at 48xlarge (AWS instance-type pages for each family)."""
    counts = {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1,
              "12xlarge": 4, "24xlarge": 4, "48xlarge": 8}  # fmt: skip
    return {f"{family}.{size}": GpuShape(count, model) for size, count in counts.items()}


def _suffixed(prefix: str, counts: tuple[int, ...], model: str) -> dict[str, GpuShape]:
    """GCP's machine types named ``<prefix>-<N>g``: N GPUs attached (Google Cloud GPU docs)."""
    return {f"{prefix}-{count}g": GpuShape(count, model) for count in counts}


INSTANCE_TYPES: dict[str, GpuShape] = {
    # AWS P4/P5 (EC2 accelerated computing: P4d, P4de, P5, P5e, P5en pages)
    "p4d.24xlarge": GpuShape(8, "NVIDIA A100 40GB"),
    "p4de.24xlarge": GpuShape(8, "NVIDIA A100 80GB"),
    "p5.48xlarge": GpuShape(8, "NVIDIA H100 80GB"),
    "p5e.48xlarge": GpuShape(8, "NVIDIA H200 141GB"),
    "p5en.48xlarge": GpuShape(8, "NVIDIA H200 141GB"),
    # AWS G5 (A10G), G6 (L4), G6e (L40S)
    **_sizes("g5", "NVIDIA A10G"),
    **_sizes("g6", "NVIDIA L4"),
    **_sizes("g6e", "NVIDIA L40S"),
    # GCP A2 (A100 40GB: highgpu, megagpu; A100 80GB: ultragpu), A3 (H100 80GB; Ultra: H200)
    **_suffixed("a2-highgpu", (1, 2, 4, 8), "NVIDIA A100 40GB"),
    **_suffixed("a2-megagpu", (16,), "NVIDIA A100 40GB"),
    **_suffixed("a2-ultragpu", (1, 2, 4, 8), "NVIDIA A100 80GB"),
    **_suffixed("a3-highgpu", (8,), "NVIDIA H100 80GB"),
    **_suffixed("a3-megagpu", (8,), "NVIDIA H100 80GB"),
    **_suffixed("a3-ultragpu", (8,), "NVIDIA H200 141GB"),
    # Azure ND A100 v4, NDm A100 v4, ND H100 v5 (Azure GPU-accelerated VM sizes)
    "Standard_ND96asr_v4": GpuShape(8, "NVIDIA A100 40GB"),
    "Standard_ND96amsr_A100_v4": GpuShape(8, "NVIDIA A100 80GB"),
    "Standard_ND96isr_H100_v5": GpuShape(8, "NVIDIA H100 80GB"),
}

# the own-data key (``_``: not a setting) naming a host's GPU model, for reports and readers
GPU_MODEL_KEY = "_gpu_model"


def gpu_data(instance_type: str | None, data: dict) -> dict:
    """The data ``instance_type`` adds to a host's ``data``: host_gpu_count, host_has_gpus and
    the GPU model, each only where the host's own data does not set it (explicit data wins);
    nothing for a type not in the table, or for a host whose data says it has no GPUs."""
    shape = INSTANCE_TYPES.get(instance_type or "")
    if shape is None or data.get("host_has_gpus") is False:
        return {}
    derived = {"host_gpu_count": shape.count, "host_has_gpus": True, GPU_MODEL_KEY: shape.model}
    return {key: value for key, value in derived.items() if key not in data}
