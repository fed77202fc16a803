"""The STAND-IN dcgm-exporter image `gpufleet-standin/dcgm-exporter:<tag>-standin`, built
with no registry, by the vLLM stand-in's builder (tests/standins/vllm/image.py): the same
Debian packages (Python 3.11 minimal, busybox), this directory's server.py as the
ENTRYPOINT, and the project's counters CSV (operations/monitoring/dcgm-counters.csv) as the
image's /etc/dcgm-exporter/default-counters.csv, where NVIDIA's image keeps upstream's.
Like the real image it takes its arguments after the image name (`-f PATH`) and listens on
:9400. Labels `gpufleet.standin=dcgm` and the recipe hash; rebuilt only when the recipe,
server.py or the CSV changes.

    python -m tests.standins.dcgm.image   # build if needed, save the tarball, print both
"""

from __future__ import annotations

from pathlib import Path

from lab import LabError, repo_root
from tests.standins.vllm import image as builder

UPSTREAM_TAG = "4.2.3-4.1.3-ubuntu22.04"  # the dcgm-exporter release it stands in for
IMAGE = f"gpufleet-standin/dcgm-exporter:{UPSTREAM_TAG}-standin"
HERE = Path(__file__).resolve().parent
SERVER = HERE / "server.py"
SERVER_IN_IMAGE = "/opt/standin/dcgm-exporter.py"
COUNTERS = HERE.parents[2] / "operations" / "monitoring" / "dcgm-counters.csv"
DEFAULT_COUNTERS = "etc/dcgm-exporter/default-counters.csv"
PORT = 9400
RECIPE_VERSION = 1

FILES = {
    "etc/passwd": builder.FILES["etc/passwd"],
    "etc/group": builder.FILES["etc/group"],
    "etc/nsswitch.conf": builder.FILES["etc/nsswitch.conf"],
    # the real image's binary name, for `docker exec ... dcgm-exporter --help`
    "usr/bin/dcgm-exporter": (
        0o755,
        f'#!/bin/sh\n# gpufleet STAND-IN for dcgm-exporter\nexec python3 {SERVER_IN_IMAGE} "$@"\n',
    ),
    "etc/gpufleet-standin-image": (  # not etc/gpufleet-standin: a GPU host's description dir
        0o644,
        "gpufleet STAND-IN for nvcr.io/nvidia/k8s/dcgm-exporter (not dcgm-exporter): "
        "built by tests/standins/dcgm\n",
    ),
}
DIRS = {"tmp": 0o1777, "root": 0o700, "opt/standin": 0o755, "etc/dcgm-exporter": 0o755}
IMAGE_CHANGES = (
    f'ENTRYPOINT ["python3", "{SERVER_IN_IMAGE}"]',
    f"EXPOSE {PORT}",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV PYTHONUNBUFFERED=1",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "ENV NVIDIA_VISIBLE_DEVICES=all",  # as NVIDIA's CUDA-based images set it
)


def recipe() -> builder.Recipe:
    """The build recipe (read at each call, so a changed server.py or CSV shows)."""
    return builder.Recipe(
        image=IMAGE,
        standin="dcgm",
        server=SERVER,
        server_in_image=SERVER_IN_IMAGE,
        work_dir="standin-dcgm",
        tar_prefix="dcgm-exporter-standin-",
        files=FILES,
        dirs=DIRS,
        changes=IMAGE_CHANGES,
        smoke_args=("--help",),
        smoke_expect="gpufleet stand-in for NVIDIA's dcgm-exporter",
        version=RECIPE_VERSION,
        copies={DEFAULT_COUNTERS: str(COUNTERS)},
    )


def recipe_hash() -> str:
    return builder.recipe_hash(recipe())


def ensure_image(root: Path, rebuild: bool = False, log=print) -> str:
    """The image's id on the controller's engine, built first unless current."""
    return builder.ensure_image(root, rebuild=rebuild, log=log, recipe=recipe())


def save_tar(root: Path, log=print) -> Path:
    """A `docker save` tarball of the image under .lab/standin-dcgm/ (reused while current)."""
    return builder.save_tar(root, log=log, recipe=recipe())


def load_into(ssh_argv: list[str], tar: Path, log=print) -> None:
    """`docker load` the tarball on a lab host unless its engine has that image already."""
    builder.load_into(ssh_argv, tar, log=log, image=IMAGE)


def main() -> int:
    """Build (if needed) and save the image; print its id, size and tarball."""
    try:
        root = repo_root()
        image_id = ensure_image(root)
        tar = save_tar(root)
    except LabError as exc:
        print(f"error: {exc}")
        return 1
    print(f"{IMAGE} {image_id} {builder.image_size(image_id) / 1e6:.1f} MB\n{tar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
