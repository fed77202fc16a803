"""The fleet configuration: one typed model, one section per layer.

This model is the single source of truth for every setting: its type, default, bounds and
one-line doc. ``group_data/all.py``, ``schema/gpufleet.schema.json`` and the README's config
reference are rendered from it (``python -m operations.config``) and a test keeps them in sync.

In pyinfra, settings are flat data keys named ``<section>_<field>`` (``driver_branch``,
``vllm_port``), so pyinfra's own precedence applies to each setting on its own: ``--data`` >
host data in the inventory > ``group_data/<group>.py`` > ``group_data/all.py``.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    IPvAnyAddress,
    ValidationInfo,
    create_model,
    field_validator,
)

LAYERS = ("preflight", "driver", "docker", "toolkit", "vllm")
Layer = Literal["preflight", "driver", "docker", "toolkit", "vllm"]


def _split_csv(value: Any) -> Any:
    """Accept ``a,b`` strings (as given with ``--data key=a,b``) where a list is expected."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# pattern -> what it allows, in words (used by error messages)
PATTERN_HINTS: dict[str, str] = {}


def _pattern(regex: str, allowed: str) -> Any:
    """A pattern constraint that also records how to say what it allows."""
    PATTERN_HINTS[regex] = allowed
    return Field(pattern=regex, json_schema_extra={"x-allowed": allowed})


def _version_text(value: Any) -> Any:
    """Versions are strings; an int (``--data driver_branch=570``) is taken as its digits."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f"write the version as a string ('{value}' as a number may lose zeros)")
    return value


def _gpu_set(value: Any) -> Any:
    """'all', or GPU indices given as a list or as '0,1,2'."""
    if value == "all" or isinstance(value, list):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\s*,\s*[0-9]+)*\s*", value):
        return _split_csv(value)
    raise ValueError("must be 'all' or GPU indices such as [0, 1] or '0,1'")


AbsPath = Annotated[str, _pattern(r"^/\S*$", "an absolute path")]
Size = Annotated[str, _pattern(r"^[1-9][0-9]*[kmg]$", "a size such as 512m or 10g")]
Word = Annotated[str, _pattern(r"^\S+$", "one word (no spaces)")]
EnvName = Annotated[str, _pattern(r"^[A-Za-z_][A-Za-z0-9_]*$", "an environment variable name")]
UnixUser = Annotated[
    str,
    _pattern(r"^[a-z_][a-z0-9_-]{0,31}$", "a Unix user name"),
]


GpuSet = Annotated[
    Literal["all"] | list[Annotated[int, Field(ge=0, le=63)]], BeforeValidator(_gpu_set)
]
Quantization = Literal["awq", "gptq", "fp8", "bitsandbytes", "awq_marlin", "gptq_marlin"]

Branch = Annotated[
    str,
    BeforeValidator(_version_text),
    _pattern(r"^[0-9]{3}$", "a 3-digit driver branch such as 550, 570 or 580"),
]
DriverVersion = Annotated[
    str,
    BeforeValidator(_version_text),
    _pattern(r"^[0-9]{3}\.[0-9]{1,3}(\.[0-9]{1,3})?$", "an exact driver version such as 580.95.05"),
]
DockerVersion = Annotated[
    str,
    BeforeValidator(_version_text),
    _pattern(r"^[0-9]+\.[0-9]+(\.[0-9]+)?$", "a Docker version such as 27.5 or 27.5.1"),
]
ToolkitVersion = Annotated[
    str,
    BeforeValidator(_version_text),
    _pattern(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9]+)?$", "a toolkit version such as 1.17.8 or 1.17.8-1"),
]
Fingerprint = Annotated[
    str, _pattern(r"^([0-9A-Fa-f]{4} ?){10}$", "a 40-hex-digit OpenPGP fingerprint")
]
PinnedImage = Annotated[
    str,
    _pattern(
        r"^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})$",
        "an image pinned by tag or digest (repo:tag or repo@sha256:…)",
    ),
]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DeployConfig(Section):
    """What a deploy run does."""

    layers: Annotated[list[Layer], BeforeValidator(_split_csv)] = Field(
        default=list(LAYERS),
        description="Layers to apply (in stack order); preflight always runs "
        "(e.g. --data deploy_layers=driver,docker).",
    )

    lock_timeout_s: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="How long apt waits for a lock another process holds (unattended-upgrades).",
    )
    apt_proxy: HttpUrl | None = Field(
        default=None,
        description="HTTP proxy apt fetches through, e.g. a shared apt-cacher-ng: one download.",
    )
    apt_proxy_bypass: Annotated[list[Word], BeforeValidator(_split_csv)] = Field(
        default=[], description="Repository hosts apt reaches directly, not through apt_proxy."
    )


class HostConfig(Section):
    """What the operator declares about the machine itself."""

    has_gpus: bool = Field(
        default=True,
        description="The host has NVIDIA GPUs; false for GPU-less hosts (the lab): "
        "GPU checks say 'not applicable'.",
    )
    gpu_count: int | None = Field(
        default=None, ge=1, le=64, description="Expected number of NVIDIA GPUs; checked when set."
    )
    address: Word | None = Field(
        default=None,
        description="Address clients and Prometheus reach the host at; unset = ssh_hostname.",
    )


class PreflightConfig(Section):
    """Layer 0: read-only checks that gate every other layer."""

    min_free_disk_gib: float = Field(
        default=30.0,
        ge=0,
        le=1_000_000,
        description="Free space needed on disk_path (driver, images and model cache).",
    )
    disk_path: AbsPath = Field(default="/", description="Path whose filesystem is checked.")


class DriverConfig(Section):
    """Layer 1: the NVIDIA driver."""

    source: Literal["cuda-repo", "distro"] = Field(
        default="cuda-repo",
        description="Where the driver comes from: NVIDIA's CUDA repository or the distribution.",
    )
    branch: Branch = Field(
        default="580",
        description="Driver branch to install and hold.",
    )
    version: DriverVersion | None = Field(
        default=None,
        description="Exact driver version inside the branch; unset = newest of the branch.",
    )
    kernel_modules: Literal["auto", "open", "proprietary"] = Field(
        default="auto",
        description="Kernel module flavour; auto = open on Turing and newer, proprietary before.",
    )
    cuda_repo_url: HttpUrl | None = Field(
        default=None,
        description="Base URL of NVIDIA's CUDA repository or your mirror; unset = NVIDIA's.",
    )
    kernel_headers: bool = Field(
        default=True,
        description="Install headers for the running kernel (DKMS builds the modules with them).",
    )
    cuda_repo_fingerprint: Fingerprint | None = Field(
        default=None,
        description="Fingerprint the repository key must have; unset = NVIDIA's published one.",
    )
    hold_packages: bool = Field(
        default=True,
        description="Hold the driver packages so unattended upgrades cannot move them.",
    )
    persistence: bool = Field(default=True, description="Enable and run nvidia-persistenced.")
    fabric_manager: Literal["auto", "enabled", "disabled"] = Field(
        default="auto",
        description="nvidia-fabricmanager; auto = installed when NVSwitches are on the PCI bus.",
    )
    dcgm: bool = Field(default=False, description="Install NVIDIA DCGM (datacenter-gpu-manager).")
    blacklist_nouveau: bool = Field(default=True, description="Blacklist and unload nouveau.")
    allow_reboot: bool = Field(
        default=True, description="Reboot the host when the loaded module differs from installed."
    )
    reboot_local: bool = Field(
        default=False, description="Also allow rebooting the machine pyinfra runs on (@local)."
    )
    reboot_timeout_s: int = Field(
        default=900, ge=60, le=7200, description="How long to wait for a rebooted host."
    )

    @field_validator("version")
    @classmethod
    def _version_in_branch(cls, version: str | None, info: ValidationInfo) -> str | None:
        branch = info.data.get("branch")
        if version and branch and version.split(".")[0] != branch:
            raise ValueError(f"must be a version of branch {branch} ({branch}.x.y)")
        return version


class DockerConfig(Section):
    """Layer 2: Docker Engine."""

    source: Literal["docker-repo", "distro"] = Field(
        default="docker-repo",
        description="Docker's own signed repository (docker-ce) or the distribution's docker.io.",
    )
    version: DockerVersion | None = Field(
        default=None,
        description="Docker Engine version to pin; unset = newest.",
    )
    repo_url: HttpUrl | None = Field(
        default=None,
        description="Base URL of Docker's repository or your mirror; unset = Docker's.",
    )
    repo_fingerprint: Fingerprint | None = Field(
        default=None,
        description="Fingerprint the repository key must have; unset = Docker's published one.",
    )
    users: Annotated[list[UnixUser], BeforeValidator(_split_csv)] = Field(
        default=[],
        description="Users added to the docker group (root-equivalent: keep empty in production).",
    )
    live_restore: bool = Field(
        default=True, description="Keep containers running while dockerd restarts."
    )
    log_max_size: Size = Field(default="100m", description="json-file log size before rotation.")
    log_max_file: int = Field(default=3, ge=1, le=100, description="json-file logs kept.")
    data_root: AbsPath | None = Field(
        default=None, description="Docker's data-root; unset keeps the current one."
    )
    registry_mirrors: Annotated[list[HttpUrl], BeforeValidator(_split_csv)] = Field(
        default=[], description="Registry mirrors for Docker Hub pulls."
    )
    cgroup_driver: Literal["systemd", "cgroupfs"] | None = Field(
        default=None, description="dockerd's cgroup driver; unset keeps Docker's default."
    )
    daemon_options: dict[str, Any] = Field(
        default={},
        description="Extra daemon.json keys the deploy owns; other keys in the file are kept.",
    )
    restart_timeout_s: int = Field(
        default=90, ge=10, le=3600, description="How long dockerd may take to come back."
    )

    @field_validator("daemon_options")
    @classmethod
    def _json_keys(cls, options: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"must be JSON-serialisable ({error})") from None
        return options


class ToolkitConfig(Section):
    """Layer 3: NVIDIA Container Toolkit."""

    version: ToolkitVersion | None = Field(
        default=None,
        description="Version of the four toolkit packages, pinned together; unset = newest.",
    )
    repo_url: HttpUrl | None = Field(
        default=None,
        description="Base URL of NVIDIA's container toolkit repository or your mirror.",
    )
    repo_fingerprint: Fingerprint | None = Field(
        default=None,
        description="Fingerprint the repository key must have; unset = NVIDIA's published one.",
    )
    default_runtime: Literal["nvidia"] | None = Field(
        default=None, description="Docker's default runtime; unset keeps Docker's (runc)."
    )
    cdi: bool = Field(default=True, description="Generate CDI specs for the GPUs.")


class VllmServer(Section):
    """What one vLLM container serves: each of these can also be set per instance."""

    model: Word = Field(
        default="Qwen/Qwen2.5-1.5B-Instruct",
        description="Model to serve (Hugging Face id or path in the cache).",
    )
    served_model_name: Word | None = Field(
        default=None, description="Name clients use; unset = the model id."
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Host port of the API.")
    gpus: GpuSet = Field(
        default="all", description="GPUs given to the container: all, or device indices."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="--tensor-parallel-size.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="--gpu-memory-utilization, a fraction in (0, 1]."
    )
    max_model_len: int | None = Field(default=None, ge=16, description="--max-model-len.")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        default="auto", description="--dtype."
    )
    quantization: Quantization | None = Field(
        default=None, description="--quantization; unset = none."
    )
    extra_args: Annotated[list[str], BeforeValidator(_split_csv)] = Field(
        default=[], description="Extra engine arguments appended to the command line."
    )

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model


InstanceName = Annotated[
    str, _pattern(r"^[a-z0-9][a-z0-9-]{0,30}$", "a short name: a-z, 0-9 and -, at most 31")
]


class VllmInstance(VllmServer):
    """One vLLM container of a host: its name and the server settings it ends up with."""

    name: InstanceName = "main"

    @property
    def container(self) -> str:
        return f"vllm-{self.name}"


def _overrides_of(server: type[Section]) -> type[Section]:
    """The per-instance model: a name plus every server field, optional (unset = inherited).

    Generated from VllmServer so types, bounds and docs are written once."""
    fields: dict[str, Any] = {
        "name": (InstanceName, Field(description="Instance name; the container is vllm-<name>."))
    }
    for name, info in server.model_fields.items():
        annotation = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        annotation = annotation | None
        fields[name] = (annotation, Field(default=None, description=info.description))
    return create_model(
        "VllmInstanceOverrides",
        __base__=Section,
        __doc__="One entry of vllm_instances; unset fields take the vllm_<field> setting.",
        **fields,
    )


VllmInstanceOverrides = _overrides_of(VllmServer)


class VllmConfig(VllmServer):
    """Layer 4: the vLLM OpenAI-compatible server."""

    allow_latest: bool = Field(default=False, description="Allow the floating 'latest' tag.")
    image: PinnedImage = Field(
        default="vllm/vllm-openai:v0.11.0",
        description="vLLM image, pinned by tag or digest.",
    )
    image_archive: AbsPath | None = Field(
        default=None,
        description="Controller path of a `docker save` archive of the image: loaded, not pulled.",
    )
    instances: list[VllmInstanceOverrides] = Field(  # type: ignore[valid-type]
        default=[],
        description="Servers of one host: [{'name': 'a', 'gpus': [0, 1], 'port': 8001}, ...]; "
        "empty = one, named main.",
    )
    bind_address: IPvAnyAddress = Field(
        default="0.0.0.0", description="Host address the API port is published on."
    )
    ipc_host: bool = Field(default=True, description="--ipc=host (needed for tensor parallel).")
    shm_size: Size = Field(default="10g", description="Shared memory size when ipc_host is off.")
    hf_cache_dir: AbsPath = Field(
        default="/var/lib/gpufleet/huggingface",
        description="Host path of the Hugging Face cache; survives container recreation.",
    )
    min_free_cache_gib: float = Field(
        default=20.0,
        ge=0,
        le=1_000_000,
        description="Free space the cache's filesystem needs before a server is (re)created.",
    )
    hf_token_env: EnvName = Field(
        default="HF_TOKEN", description="Controller environment variable holding the HF token."
    )
    hf_token_file: AbsPath | None = Field(
        default=None, description="Controller file holding the HF token (instead of the env var)."
    )
    api_key_env: EnvName = Field(
        default="VLLM_API_KEY", description="Controller environment variable holding the API key."
    )
    api_key_file: AbsPath | None = Field(
        default=None, description="Controller file holding the API key (instead of the env var)."
    )
    require_api_key: bool = Field(
        default=False, description="Refuse to deploy when no API key is given on the controller."
    )
    restart_policy: Literal["no", "always", "unless-stopped", "on-failure"] = Field(
        default="unless-stopped", description="Docker restart policy of the container."
    )
    ready_timeout_s: int = Field(
        default=1800,
        ge=10,
        le=86400,
        description="How long a (re)started server may take to get ready (model download too).",
    )

    @field_validator("image")
    @classmethod
    def _pinned(cls, image: str, info: ValidationInfo) -> str:
        if image.endswith(":latest") and not info.data.get("allow_latest"):
            raise ValueError("the floating tag 'latest' is refused: pin a tag or digest")
        return image

    def servers(self) -> list[VllmInstance]:
        """The instances this host runs, each with the section's settings filled in."""
        inherited = {name: getattr(self, name) for name in VllmServer.model_fields}
        if not self.instances:
            return [VllmInstance(**inherited)]
        return [
            VllmInstance(**(inherited | entry.model_dump(exclude_none=True)))
            for entry in self.instances
        ]


class FleetConfig(BaseModel):
    """The effective configuration of one host: one section per layer."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    deploy: DeployConfig = DeployConfig()
    host: HostConfig = HostConfig()
    preflight: PreflightConfig = PreflightConfig()
    driver: DriverConfig = DriverConfig()
    docker: DockerConfig = DockerConfig()
    toolkit: ToolkitConfig = ToolkitConfig()
    vllm: VllmConfig = VllmConfig()

    def conflicts(self) -> list[tuple[str, Any, str]]:
        """Problems between settings that no single field can see, as (key, value, allowed)."""
        return _vllm_conflicts(self.vllm, self.host.gpu_count)


def _instance_key(vllm: VllmConfig, index: int, field: str) -> str:
    """The data key an instance's field came from: its vllm_instances entry, or vllm_<field>."""
    if vllm.instances and getattr(vllm.instances[index], field) is not None:
        return f"vllm_instances[{index}].{field}"
    return f"vllm_{field}"


def _gpus_of(server: VllmInstance, gpu_count: int | None) -> set[int] | None:
    """The GPU indices a server gets; None for 'all' on a host whose GPU count is not set."""
    if server.gpus == "all":
        return set(range(gpu_count)) if gpu_count else None
    return set(server.gpus)


def _vllm_conflicts(vllm: VllmConfig, gpu_count: int | None) -> list[tuple[str, Any, str]]:
    """Instances of one host: names and ports unique, GPU sets disjoint and on the host, and
    each tensor-parallel size within its instance's GPUs."""
    problems: list[tuple[str, Any, str]] = []
    seen: list[tuple[VllmInstance, set[int] | None]] = []
    for index, server in enumerate(vllm.servers()):
        key = functools.partial(_instance_key, vllm, index)
        gpus = _gpus_of(server, gpu_count)
        for other, other_gpus in seen:
            for field in ("name", "port"):
                if getattr(server, field) == getattr(other, field):
                    problems.append(
                        (key(field), getattr(server, field), f"already used by {other.container}")
                    )
            shared = None if gpus is None or other_gpus is None else gpus & other_gpus
            if shared is None or shared:
                where = "every GPU" if shared is None else f"GPU {sorted(shared)}"
                problems.append(
                    (
                        key("gpus"),
                        server.gpus,
                        f"shares {where} with {other.container}: "
                        "give each instance its own GPU indices",
                    )
                )
        if gpu_count is not None and gpus and max(gpus) >= gpu_count:
            problems.append(
                (
                    key("gpus"),
                    server.gpus,
                    f"must be GPU indices below host_gpu_count ({gpu_count})",
                )
            )
        if gpus is not None and server.tensor_parallel_size > len(gpus):
            problems.append(
                (
                    key("tensor_parallel_size"),
                    server.tensor_parallel_size,
                    f"must be at most the {len(gpus)} GPU(s) of {server.container}",
                )
            )
        seen.append((server, gpus))
    return problems


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation for name, field in FleetConfig.model_fields.items()
}
# flat data key -> (section, field)
SETTINGS: dict[str, tuple[str, str]] = {
    f"{section}_{field}": (section, field)
    for section, model in SECTIONS.items()
    for field in model.model_fields
}

_SECRET_WORDS = re.compile(r"token|secret|password|passwd|api_?key", re.IGNORECASE)
