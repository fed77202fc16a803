"""The fleet configuration: one typed model, one section per layer.

This model is the single source of truth for every setting: its type, default, bounds and
one-line doc. ``group_data/all.py``, ``schema/gpufleet.schema.json`` and the README's config
reference are rendered from it (``python -m operations.cli.render``) and a test keeps them in sync.

Values are refused here when they can never be legitimate, whatever later quotes them: a
bool where a number goes, NaN or infinity, a number beyond a sane bound, a control or
invisible character in any string, a path or name outside its character set, a daemon.json
key or engine flag a setting owns, a secret on the vLLM command line. Each refusal says
what is allowed; operations.config.load turns it into one line naming host, key and file.

In pyinfra, settings are flat data keys named ``<section>_<field>`` (``driver_branch``,
``vllm_port``), so pyinfra's own precedence applies to each setting on its own: ``--data`` >
host data in the inventory > ``group_data/<group>.py`` > ``group_data/all.py``.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
import typing
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    IPvAnyAddress,
    IPvAnyNetwork,
    ValidationInfo,
    create_model,
    field_validator,
)

from operations.config.secrets import looks_secret, secret_flag

LAYERS = ("preflight", "driver", "docker", "toolkit", "vllm", "monitoring")
Layer = Literal["preflight", "driver", "docker", "toolkit", "vllm", "monitoring"]


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


# --- Text: no setting may hold a control or invisible character ---------------------------
# A newline in a path or URL could end a line of a generated file (apt.conf, ssh_config, a
# unit) and start another; pydantic's URL type even drops it silently. Zero-width and bidi
# characters make a value read differently from what it is. So every string of every
# setting, however deeply nested (lists, dicts, their keys), is refused if it holds one.
_HIDDEN = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}  # control, format (zero-width, bidi), ...


def hidden_character(text: str) -> str | None:
    """The first control or invisible character of ``text``, as ``U+000A``; else None."""
    for char in text:
        if unicodedata.category(char) in _HIDDEN:
            return f"U+{ord(char):04X}"
    return None


def _refuse_hidden(value: Any) -> Any:
    """``value`` unchanged, or ValueError naming the first control character anywhere in it."""
    texts = [value] if isinstance(value, str) else []
    if isinstance(value, (bytes, bytearray)):  # pydantic reads bytes as text
        texts = [bytes(value).decode("latin-1")]
    if isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_hidden(key)
            _refuse_hidden(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _refuse_hidden(item)
    for text in texts:
        found = hidden_character(text)
        if found:
            raise ValueError(f"must not contain control or invisible characters (found {found})")
    return value


# --- Numbers: a bool is not a number, NaN and infinity are not a quantity ------------------
def _whole(value: Any) -> Any:
    """Before int validation: refuse True/False (``vllm_port = True`` was port 1) and NaN;
    text of digits (``--data`` values, when passed raw) is left to pydantic, which reads it."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true/false")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite whole number")
    return value


def _finite(value: Any) -> Any:
    """Before float validation: refuse True/False, and NaN and infinity in any spelling."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    try:
        number = float(value) if isinstance(value, (int, float, str)) else 0.0
    except ValueError:
        return value  # not a number at all: pydantic says so
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return value


Int = Annotated[int, BeforeValidator(_whole)]
Number = Annotated[float, BeforeValidator(_finite), Field(allow_inf_nan=False)]


def _version_text(value: Any) -> Any:
    """Versions are strings; an int (``--data driver_branch=570``) is taken as its digits.

    A float is refused: pyinfra reads ``--data docker_version=27.10`` as the number 27.1, so
    what the operator wrote cannot be known. The message says how to write it as a string
    (pyinfra_cli.util.parse_cli_arg reads a JSON string, quotes included, as a string);
    ``<key>`` is filled in with the data key by operations.config.load."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a version written as a string")
    if isinstance(value, float):
        text = repr(value)
        raise ValueError(
            f'write the version as a string: <key> = "{text}" in a file, '
            f"--data '<key>=\"{text}\"' on the command line "
            "(as a number, 27.10 would be read as 27.1)"
        )
    return value


def _gpu_index(item: Any, position: int) -> int:
    """One GPU index of a list: a whole number from 0 to 63 (digits as text are read)."""
    if isinstance(item, str) and item.strip().isdigit():
        item = int(item)
    if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 63:
        raise ValueError(f"must be 'all' or GPU indices from 0 to 63 (item {position} is {item!r})")
    return item


def _gpu_set(value: Any) -> Any:
    """'all', or GPU indices given as a list or as '0,1,2': each index once, at least one."""
    if value == "all":
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\s*,\s*[0-9]+)*\s*", value):
        value = _split_csv(value)
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be 'all' or GPU indices such as [0, 1] or '0,1'")
    if not value:
        raise ValueError("must be at least one GPU index or 'all'")
    indices = [_gpu_index(item, position) for position, item in enumerate(value)]
    twice = sorted({index for index in indices if indices.count(index) > 1})
    if twice:
        raise ValueError(f"must list each GPU index once (GPU {twice[0]} is given twice)")
    return indices


def _no_dot_dot(path: str) -> str:
    if ".." in path.split("/"):
        raise ValueError("must be an absolute path without '..' components")
    return path


# Paths of the servers (the HF cache, data-root, …) and of the controller (archives, secret
# files). Letters, digits and . _ - + @ ~ only, besides '/': such a path means the same in a
# shell, a unit file, daemon.json and docker's --volume src:dst (which a ':' or ',' would
# split), so none of those needs to trust a quoting step. Blanks, quotes, $ ` ; & | < > \ *
# and control characters have no place in a server path that a deploy manages.
AbsPath = Annotated[
    str,
    _pattern(
        r"^/[A-Za-z0-9._+@~/-]*$",
        "an absolute path of letters, digits and . _ - + @ ~ / "
        "(no blanks, quotes, shell characters or '..')",
    ),
    AfterValidator(_no_dot_dot),
]
Size = Annotated[str, _pattern(r"^[1-9][0-9]*[kmg]$", "a size such as 512m or 10g")]


def _count_text(value: Any) -> Any:
    """A count given as a number (``vllm_max_unavailable = 2``) is taken as its digits."""
    if isinstance(value, bool):
        raise ValueError("must be a count such as 2 or a percentage such as 25%, not true/false")
    return str(value) if isinstance(value, int) else value


CountOrPercent = Annotated[
    str,
    BeforeValidator(_count_text),
    _pattern(
        r"^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$",
        "a count of hosts such as 2, or a percentage of the run's hosts such as 25% (1% to 100%)",
    ),
]
EnvName = Annotated[str, _pattern(r"^[A-Za-z_][A-Za-z0-9_]*$", "an environment variable name")]
UnixUser = Annotated[
    str,
    _pattern(r"^[a-z_][a-z0-9_-]{0,31}$", "a Unix user name"),
]

# RFC 1123 host names: labels of letters, digits and inner '-', dot-separated, 253 at most.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def is_host_name(value: Any) -> bool:
    """An RFC 1123 host name (``gpu-01.example.internal``): ASCII labels only."""
    return isinstance(value, str) and _HOST_NAME.fullmatch(value) is not None


def is_ip_address(value: Any) -> bool:
    """An IPv4 or IPv6 address, without brackets, zone (``%eth0``) or port."""
    if not isinstance(value, str) or "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _host_name(value: str) -> str:
    if not is_host_name(value):
        raise ValueError("must be a host name (RFC 1123: letters, digits, '-' and '.')")
    return value


def _host(value: str) -> str:
    if not (is_host_name(value) or is_ip_address(value)):
        raise ValueError(
            "must be a host name (letters, digits, '-' and '.') or an IPv4/IPv6 address"
        )
    return value


def _text_only(value: Any) -> Any:
    """Refuse a non-string where an address must be written as text (True read as 0.0.0.1),
    and an IPv6 zone (``%eth0``), which Docker's --publish cannot take."""
    if not isinstance(value, str) or "%" in value:
        raise ValueError("must be an IPv4 or IPv6 address written as a string (no %zone)")
    return value


HostName = Annotated[
    str,
    AfterValidator(_host_name),
    Field(json_schema_extra={"x-allowed": "a host name (RFC 1123)"}),
]
Host = Annotated[
    str,
    AfterValidator(_host),
    Field(json_schema_extra={"x-allowed": "a host name or an IPv4/IPv6 address"}),
]
IpAddress = Annotated[IPvAnyAddress, BeforeValidator(_text_only)]

# RFC 3986 characters only: pydantic's URL type would percent-encode quotes and silently
# drop tabs and newlines; the operator should see the URL that is used, as written.
_URL_TEXT = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+")


def _url_text(value: Any) -> Any:
    if isinstance(value, str) and not _URL_TEXT.fullmatch(value):
        raise ValueError(
            "must be an http(s) URL of plain ASCII: no blanks, quotes, backslashes, "
            "or characters that are not percent-encoded"
        )
    return value


Url = Annotated[HttpUrl, BeforeValidator(_url_text)]

# Hugging Face repository ids (org/name) in their ASCII character set, or a path in the
# cache: look-alike or zero-width Unicode letters would name another model than the one read.
ModelId = Annotated[
    str,
    _pattern(
        r"^([A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?|/[A-Za-z0-9._/-]+)$",
        "a Hugging Face id such as Qwen/Qwen2.5-1.5B-Instruct (ASCII letters, digits, "
        "'.', '_', '-' and one '/') or an absolute path",
    ),
    AfterValidator(_no_dot_dot),
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
CudaVersion = Annotated[
    str,
    BeforeValidator(_version_text),
    _pattern(r"^(auto|[0-9]{1,2}\.[0-9]{1,2})$", "auto, or a CUDA version such as 12.8"),
]
# NVIDIA's classification (XID catalogue): memory, bus, NVLink and GSP faults that leave a GPU
# unfit to serve; application faults (13, 31, 43, 45: a bad kernel, a killed process) are not.
FATAL_XIDS = (48, 63, 64, 74, 79, 92, 94, 95, 119, 120)
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


MAX_MODEL_LEN = 2**24  # tokens; the longest contexts of today's models are about 10 M

# --- docker_daemon_options --------------------------------------------------------------
# Keys the deploy writes itself (the docker and toolkit layers): a second value for one of
# them would fight the setting that owns it on every run.
DAEMON_KEYS_OWNED = {
    "data-root": "set docker_data_root instead",
    "live-restore": "set docker_live_restore instead",
    "log-driver": "the deploy uses json-file: set docker_log_max_size and docker_log_max_file",
    "log-opts": "set docker_log_max_size and docker_log_max_file instead",
    "registry-mirrors": "set docker_registry_mirrors instead",
    "exec-opts": "set docker_cgroup_driver instead (native.cgroupdriver)",
    "default-runtime": "set toolkit_default_runtime instead",
    "runtimes": "the toolkit layer registers the nvidia runtime; add other runtimes to "
    "daemon.json by hand (keys the deploy does not own are kept)",
}
# Keys the packaged docker.service already gives dockerd as flags (-H fd://,
# --containerd=…): dockerd refuses to start when a directive is both a flag and in the file.
DAEMON_KEYS_OF_THE_UNIT = {
    "hosts": "docker.service already passes -H fd://: dockerd would refuse to start",
    "containerd": "docker.service already passes --containerd: dockerd would refuse to start",
}
# The JSON type of each key Docker documents for daemon.json on Linux (dockerd reference,
# "Daemon configuration file"); keys not listed are left to `dockerd --validate`.
_DAEMON_KINDS: list[tuple[type, str, str]] = [
    (
        bool,
        "true or false",
        "debug experimental icc init ip-forward ip-masq ip6tables iptables ipv6 "
        "no-new-privileges raw-logs selinux-enabled tls tlsverify userland-proxy",
    ),
    (
        int,
        "a whole number",
        "max-concurrent-downloads max-concurrent-uploads max-download-attempts mtu "
        "oom-score-adjust shutdown-timeout",
    ),
    (
        str,
        "a string",
        "api-cors-header bip bridge cgroup-parent containerd containerd-namespace "
        "default-cgroupns-mode default-gateway default-gateway-v6 default-ipc-mode "
        "default-shm-size exec-root fixed-cidr fixed-cidr-v6 group init-path ip "
        "log-format log-level metrics-addr pidfile seccomp-profile storage-driver "
        "swarm-default-advertise-addr tlscacert tlscert tlskey userland-proxy-path "
        "userns-remap",
    ),
    (
        list,
        "a list of strings",
        "allow-nondistributable-artifacts authorization-plugins cdi-spec-dirs dns "
        "dns-opts dns-search hosts insecure-registries labels node-generic-resources "
        "storage-opts",
    ),
    (dict, "an object", "builder default-ulimits features"),
    (list, "a list of objects", "default-address-pools"),
]
_DAEMON_TYPES = {key: (kind, words) for kind, words, keys in _DAEMON_KINDS for key in keys.split()}


def _json_problem(value: Any) -> str | None:
    """Why ``value`` is not plain JSON (a NaN, a set, a non-string key), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a JSON number (no NaN or infinity)"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"the key {key!r} is not a string"
            found = _json_problem(item)
            if found:
                return found
        return None
    if isinstance(value, list):
        return next(filter(None, map(_json_problem, value)), None)
    if value is None or isinstance(value, (str, int, float)):
        return None
    return f"{type(value).__name__} {value!r} is not JSON"


def _daemon_type_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not of the type Docker documents for ``key``, else None."""
    wanted, words = _DAEMON_TYPES.get(key, (object, ""))
    ok = isinstance(value, wanted) and not (wanted is int and isinstance(value, bool))
    if ok and words == "a list of strings":
        ok = all(isinstance(item, str) for item in value)
    if ok and key == "features":
        ok = all(isinstance(item, bool) for item in value.values())
        words = "an object of true/false values"
    return None if ok else f"'{key}' must be {words}, as Docker's daemon.json reference says"


def daemon_options_checked(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """Extra daemon.json keys: plain JSON (``json.dumps`` would write NaN, which dockerd
    cannot read), not a key a setting owns, and of the type Docker documents."""
    found = _json_problem(options)
    if found is None:
        try:
            json.dumps(options, allow_nan=False)
        except (TypeError, ValueError) as error:
            found = str(error)
    if found:
        raise ValueError(f"must be JSON-serialisable: {found}")
    for key, value in options.items():
        if key in DAEMON_KEYS_OWNED:
            raise ValueError(f"'{key}' is the deploy's own key: {DAEMON_KEYS_OWNED[key]}")
        if key in DAEMON_KEYS_OF_THE_UNIT:
            raise ValueError(f"'{key}' cannot be set here: {DAEMON_KEYS_OF_THE_UNIT[key]}")
        found = _daemon_type_problem(key, value)
        if found:
            raise ValueError(found)
    return options


# --- vllm_extra_args ------------------------------------------------------------------------
# Flags the vLLM layer (engine_args) sets from a setting: a second one would override it
# unseen (or, for --host/--port, break the published port).
ENGINE_FLAGS_OWNED = {
    "--model": "vllm_model",
    "--host": "vllm_bind_address (the host address; the server listens on all in its container)",
    "--port": "vllm_port (the host port)",
    "--served-model-name": "vllm_served_model_name",
    "--tensor-parallel-size": "vllm_tensor_parallel_size",
    "-tp": "vllm_tensor_parallel_size",
    "--gpu-memory-utilization": "vllm_gpu_memory_utilization",
    "--dtype": "vllm_dtype",
    "--max-model-len": "vllm_max_model_len",
    "--quantization": "vllm_quantization",
    "-q": "vllm_quantization",
}
_SECRET_HINT = (
    "a secret on the command line shows in ps and docker inspect: give the API key with "
    "vllm_api_key_env or vllm_api_key_file, the HF token with vllm_hf_token_env or "
    "vllm_hf_token_file"
)


def _flag_name(arg: str) -> str | None:
    """The flag an argument sets, as vLLM reads it (``--Tensor_Parallel_Size=2`` is
    ``--tensor-parallel-size``); None for a value."""
    if not arg.startswith("-") or re.fullmatch(r"-[0-9.]+", arg):
        return None
    name = arg.split("=", 1)[0].lower()
    return name[:2] + name[2:].replace("_", "-") if name.startswith("--") else name


def _owner_of(flag: str) -> str | None:
    """The setting that owns ``flag``, also for a unique abbreviation (argparse takes
    ``--max-model`` for ``--max-model-len``)."""
    if flag in ENGINE_FLAGS_OWNED:
        return ENGINE_FLAGS_OWNED[flag]
    if flag.startswith("--") and len(flag) >= 5:
        owners = [owner for name, owner in ENGINE_FLAGS_OWNED.items() if name.startswith(flag)]
        return owners[0] if len(set(owners)) == 1 else None
    return None


def extra_args_checked(args: list[str]) -> list[str]:
    """Extra engine arguments: no secret (flag or value) and no flag a setting owns."""
    for arg in args:
        flag = _flag_name(arg)
        if (flag and secret_flag(flag)) or looks_secret(arg):
            raise ValueError(_SECRET_HINT)
        owner = flag and _owner_of(flag)
        if owner:
            raise ValueError(f"'{flag}' is set by the layer: set {owner} instead")
    return args


def _holds_sections(annotation: Any) -> bool:
    """The annotation is, or contains, a Section model (``list[VllmInstanceOverrides]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_holds_sections(arg) for arg in typing.get_args(annotation))


@functools.cache
def _nested_field(model: type[BaseModel], field: str) -> bool:
    return _holds_sections(model.model_fields[field].annotation)


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable once validated,
    and no string anywhere in a value holds a control or invisible character."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _visible_text(cls, value: Any, info: ValidationInfo) -> Any:
        if _nested_field(cls, info.field_name):
            return value  # each entry checks its own fields (the error names the entry's key)
        return _refuse_hidden(value)


class DeployConfig(Section):
    """What a deploy run does."""

    layers: Annotated[list[Layer], BeforeValidator(_split_csv)] = Field(
        default=list(LAYERS),
        description="Layers to apply (in stack order); preflight always runs "
        "(e.g. --data deploy_layers=driver,docker).",
    )

    lock_timeout_s: Int = Field(
        default=600,
        ge=0,
        le=86400,
        description="How long apt waits for a lock another process holds (unattended-upgrades).",
    )
    apt_proxy: Url | None = Field(
        default=None,
        description="HTTP proxy apt fetches through, e.g. a shared apt-cacher-ng: one download.",
    )
    apt_proxy_bypass: Annotated[list[HostName], BeforeValidator(_split_csv)] = Field(
        default=[], description="Repository hosts apt reaches directly, not through apt_proxy."
    )
    fact_timeout_s: Int = Field(
        default=60,
        ge=1,
        le=86400,
        description="How long reading one fact of a host may take before the host fails.",
    )
    command_timeout_s: Int = Field(
        default=600,
        ge=1,
        le=86400,
        description="How long one command of an operation may take (when no other bound is its).",
    )
    install_timeout_s: Int = Field(
        default=1800,
        ge=1,
        le=86400,
        description="How long a package install, image pull or load, or file transfer may take.",
    )
    timeout_margin_s: Int = Field(
        default=60,
        ge=1,
        le=86400,
        description="Added to the waits with a deadline of their own (readiness, Docker restart).",
    )
    keepalive_interval_s: Int = Field(
        default=10,
        ge=1,
        le=86400,
        description="While a command runs, an SSH keepalive that needs a reply goes this often.",
    )
    keepalive_count: Int = Field(
        default=3,
        ge=1,
        le=86400,
        description="Keepalives left unanswered in a row before a host counts as stopped.",
    )
    lock_wait_s: Int = Field(
        default=300,
        ge=0,
        le=86400,
        description="How long a deploy waits for another deploy's lock on a host (0: fail now).",
    )

    @field_validator("layers")
    @classmethod
    def _each_layer_once(cls, layers: list[str]) -> list[str]:
        twice = [layer for layer in LAYERS if layers.count(layer) > 1]
        if twice:
            raise ValueError(f"must name each layer once ('{twice[0]}' is given twice)")
        return layers


class HostConfig(Section):
    """What the operator declares about the machine itself."""

    has_gpus: bool = Field(
        default=True,
        description="The host has NVIDIA GPUs; false for GPU-less hosts (the lab): "
        "GPU checks say 'not applicable'.",
    )
    gpu_count: Annotated[int, Field(ge=1, le=64), BeforeValidator(_whole)] | None = Field(
        default=None, description="Expected number of NVIDIA GPUs; checked when set."
    )
    address: Host | None = Field(
        default=None,
        description="Address clients and Prometheus reach the host at; unset = ssh_hostname.",
    )


class PreflightConfig(Section):
    """Layer 0: read-only checks that gate every other layer."""

    min_free_disk_gib: Number = Field(
        default=30.0,
        ge=0,
        le=1_000_000,
        description="Free space needed on disk_path (driver, images and model cache).",
    )
    disk_path: AbsPath = Field(default="/", description="Path whose filesystem is checked.")


class DriverConfig(Section):
    """Layer 1: the NVIDIA driver."""

    source: Literal["cuda-repo", "distro", "preinstalled"] = Field(
        default="cuda-repo",
        description="cuda-repo (NVIDIA's), distro, or preinstalled (cloud image: installs none).",
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
    cuda_repo_url: Url | None = Field(
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
    reboot_timeout_s: Int = Field(
        default=900, ge=60, le=7200, description="How long to wait for a rebooted host."
    )

    @field_validator("version")
    @classmethod
    def _version_in_branch(cls, version: str | None, info: ValidationInfo) -> str | None:
        branch = info.data.get("branch")
        if version and branch and version.split(".")[0] != branch:
            raise ValueError(f"must be a version of branch {branch} ({branch}.x.y)")
        return version


class GpuConfig(Section):
    """GPU health limits the verify checks apply (operations/driver/health.py)."""

    fatal_xids: Annotated[
        list[Annotated[int, Field(ge=1, le=1000), BeforeValidator(_whole)]],
        BeforeValidator(_split_csv),
    ] = Field(
        default=list(FATAL_XIDS),
        description="Xid codes that fail the kernel log check; others are reported only.",
    )
    temperature_margin_c: Int = Field(
        default=5,
        ge=0,
        le=50,
        description="A GPU this close to its slowdown temperature (degrees C) fails.",
    )
    max_correctable_remapped_rows: (
        Annotated[int, Field(ge=0, le=100_000), BeforeValidator(_whole)] | None
    ) = Field(
        default=None,
        description="Rows remapped for correctable errors a GPU may have; unset = not checked.",
    )
    min_cuda_driver: CudaVersion = Field(
        default="auto",
        description="CUDA version the driver must support; auto = the vLLM image tag's (README).",
    )


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
    repo_url: Url | None = Field(
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
    log_max_file: Int = Field(default=3, ge=1, le=100, description="json-file logs kept.")
    data_root: AbsPath | None = Field(
        default=None, description="Docker's data-root; unset keeps the current one."
    )
    registry_mirrors: Annotated[list[Url], BeforeValidator(_split_csv)] = Field(
        default=[], description="Registry mirrors for Docker Hub pulls."
    )
    cgroup_driver: Literal["systemd", "cgroupfs"] | None = Field(
        default=None, description="dockerd's cgroup driver; unset keeps Docker's default."
    )
    daemon_options: dict[str, Any] = Field(
        default={},
        description="Extra daemon.json keys the deploy owns; other keys in the file are kept.",
    )
    restart_timeout_s: Int = Field(
        default=90, ge=10, le=3600, description="How long dockerd may take to come back."
    )

    @field_validator("daemon_options", mode="before")
    @classmethod
    def _json_keys(cls, options: Any) -> Any:
        return daemon_options_checked(options) if isinstance(options, Mapping) else options


CveId = Annotated[str, _pattern(r"^CVE-[0-9]{4}-[0-9]{4,}$", "a CVE id such as CVE-2025-23266")]


class ToolkitConfig(Section):
    """Layer 3: NVIDIA Container Toolkit."""

    version: ToolkitVersion | None = Field(
        default=None,
        description="Version of the four toolkit packages, pinned together; unset = newest.",
    )
    repo_url: Url | None = Field(
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
    accept_cves: Annotated[list[CveId], BeforeValidator(_split_csv)] = Field(
        default=[],
        description="CVEs of NVIDIA toolkit bulletins accepted below their fix; unset = none.",
    )


class VllmServer(Section):
    """What one vLLM container serves: each of these can also be set per instance."""

    model: ModelId = Field(
        default="Qwen/Qwen2.5-1.5B-Instruct",
        description="Model to serve (Hugging Face id or path in the cache).",
    )
    served_model_name: ModelId | None = Field(
        default=None, description="Name clients use; unset = the model id."
    )
    port: Int = Field(default=8000, ge=1, le=65535, description="Host port of the API.")
    gpus: GpuSet = Field(
        default="all", description="GPUs given to the container: all, or device indices."
    )
    tensor_parallel_size: Int = Field(default=1, ge=1, le=64, description="--tensor-parallel-size.")
    gpu_memory_utilization: Number = Field(
        default=0.9, gt=0, le=1, description="--gpu-memory-utilization, a fraction in (0, 1]."
    )
    max_model_len: (
        Annotated[int, Field(ge=16, le=MAX_MODEL_LEN), BeforeValidator(_whole)] | None
    ) = Field(default=None, description="--max-model-len.")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        default="auto", description="--dtype."
    )
    quantization: Quantization | None = Field(
        default=None, description="--quantization; unset = none."
    )
    extra_args: Annotated[
        list[str], BeforeValidator(_split_csv), AfterValidator(extra_args_checked)
    ] = Field(default=[], description="Extra engine arguments appended to the command line.")

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
        default="vllm/vllm-openai:v0.31.0",
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
    bind_address: IpAddress = Field(
        default="0.0.0.0", description="Host address the API port is published on."
    )
    ipc_host: bool = Field(default=True, description="--ipc=host (needed for tensor parallel).")
    shm_size: Size = Field(default="10g", description="Shared memory size when ipc_host is off.")
    hf_cache_dir: AbsPath = Field(
        default="/var/lib/gpufleet/huggingface",
        description="Host path of the Hugging Face cache; survives container recreation.",
    )
    min_free_cache_gib: Number = Field(
        default=20.0,
        ge=0,
        le=1_000_000,
        description="Free space the cache's filesystem needs before a server is (re)created.",
    )
    prefetch_timeout_s: Int = Field(
        default=3600,
        ge=10,
        le=86400,
        description="Bound of the model's pre-fetch, run before a server is (re)created.",
    )
    hf_offline: bool = Field(
        default=True,
        description="Servers run with HF_HUB_OFFLINE=1: only the pre-fetched cache, no Hub.",
    )
    compile_cache_dir: AbsPath = Field(
        default="/var/lib/gpufleet/vllm-cache",
        description="Host path of vLLM's compile cache (VLLM_CACHE_ROOT), root-only 0700.",
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
    ready_timeout_s: Int = Field(
        default=1800,
        ge=10,
        le=86400,
        description="How long a (re)started server may take to get ready (model download too).",
    )
    max_unavailable: CountOrPercent = Field(
        default="25%",
        description="Most hosts a deploy takes out of service at once to replace a vLLM server.",
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


Duration = Annotated[
    str,
    _pattern(r"^[1-9][0-9]{0,5}(ms|s|m|h|d|w|y)$", "a Prometheus duration such as 30s, 5m or 15d"),
]


class MonitoringConfig(Section):
    """Layer 5: exporters on every host; Prometheus, alerts and dashboards on some."""

    node_exporter: bool = Field(
        default=True, description="Run the distribution's prometheus-node-exporter."
    )
    node_exporter_address: IpAddress = Field(
        default="0.0.0.0", description="Address node-exporter listens on."
    )
    node_exporter_port: Int = Field(
        default=9100, ge=1, le=65535, description="Port node-exporter listens on."
    )
    dcgm_exporter: bool = Field(
        default=True, description="Run NVIDIA's dcgm-exporter container on GPU hosts."
    )
    dcgm_image: PinnedImage = Field(
        default="nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04",
        description="dcgm-exporter image, pinned by tag or digest.",
    )
    dcgm_image_archive: AbsPath | None = Field(
        default=None,
        description="Controller path of a `docker save` archive of the dcgm-exporter image.",
    )
    dcgm_address: IpAddress = Field(
        default="0.0.0.0", description="Host address dcgm-exporter's port is published on."
    )
    dcgm_port: Int = Field(
        default=9400, ge=1, le=65535, description="Host port of dcgm-exporter's /metrics."
    )
    prometheus: bool = Field(
        default=False,
        description="Run the fleet's Prometheus here (set for the group monitoring).",
    )
    grafana_provisioning: bool = Field(
        default=False,
        description="On Prometheus hosts, also write Grafana's datasource and dashboards.",
    )
    prometheus_address: IpAddress = Field(
        default="0.0.0.0", description="Address Prometheus listens on."
    )
    prometheus_port: Int = Field(
        default=9090, ge=1, le=65535, description="Port Prometheus listens on."
    )
    prometheus_retention: Duration = Field(
        default="15d",
        description="How long Prometheus keeps samples (--storage.tsdb.retention.time).",
    )
    scrape_interval: Duration = Field(
        default="15s", description="How often Prometheus scrapes every target."
    )
    alert_for: Duration | None = Field(
        default=None,
        description="One `for:` for every alert rule (a lab's short one); unset = each rule's own.",
    )


Network = Annotated[IPvAnyNetwork, BeforeValidator(_text_only)]


class GatewayConfig(Section):
    """Layer 4's front: nginx in front of the vLLM servers, which then listen on loopback."""

    mode: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="on; off; auto = on unless vllm_bind_address is a loopback address.",
    )
    backend_port_offset: Int = Field(
        default=10000,
        ge=1,
        le=60000,
        description="A server's loopback port behind the gateway: its vllm port plus this.",
    )
    tls_cert_file: AbsPath | None = Field(
        default=None, description="Controller path of the certificate (chain) nginx presents."
    )
    tls_key_file: AbsPath | None = Field(
        default=None, description="Controller path of its private key (mode 0600)."
    )
    plain_http: bool = Field(
        default=False, description="Serve plain HTTP without TLS (only when set)."
    )
    metrics_allow: Annotated[list[Network], BeforeValidator(_split_csv)] = Field(
        default=[],
        description="Addresses allowed /metrics besides loopback and the Prometheus hosts.",
    )
    max_body_size: Size = Field(default="16m", description="Largest request body accepted.")
    read_timeout_s: Int = Field(
        default=3600,
        ge=10,
        le=86400,
        description="How long a request may run (long generations, streams).",
    )

    def enabled(self, bind: Any) -> bool:
        """Whether the gateway fronts servers published on ``bind`` (vllm_bind_address)."""
        return self.mode == "on" or (self.mode == "auto" and not bind.is_loopback)

    def published(self, bind: Any, port: int) -> tuple[Any, int]:
        """(address, port) a vLLM server's container is published on: loopback behind the
        gateway (port + backend_port_offset), else vllm_bind_address and its own port."""
        if not self.enabled(bind):
            return bind, port
        loopback = "::1" if bind.version == 6 else "127.0.0.1"
        return ipaddress.ip_address(loopback), port + self.backend_port_offset


class FleetConfig(BaseModel):
    """The effective configuration of one host: one section per layer."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    deploy: DeployConfig = DeployConfig()
    host: HostConfig = HostConfig()
    preflight: PreflightConfig = PreflightConfig()
    driver: DriverConfig = DriverConfig()
    gpu: GpuConfig = GpuConfig()
    docker: DockerConfig = DockerConfig()
    toolkit: ToolkitConfig = ToolkitConfig()
    vllm: VllmConfig = VllmConfig()
    gateway: GatewayConfig = GatewayConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    def conflicts(self) -> list[tuple[str, Any, str]]:
        """Problems between settings that no single field can see, as (key, value, allowed)."""
        return _vllm_conflicts(self.vllm, self.host.gpu_count) + _gateway_conflicts(self)


def _gateway_conflicts(config: FleetConfig) -> list[tuple[str, Any, str]]:
    """A gateway needs TLS files (both) or plain HTTP allowed, and each server's loopback
    port must be a port no other server takes."""
    gateway = config.gateway
    if "vllm" not in config.deploy.layers or not gateway.enabled(config.vllm.bind_address):
        return []
    problems: list[tuple[str, Any, str]] = []
    cert, key = gateway.tls_cert_file, gateway.tls_key_file
    if bool(cert) != bool(key):
        missing = "gateway_tls_key_file" if cert else "gateway_tls_cert_file"
        problems.append((missing, None, "must be set too: TLS needs the certificate and its key"))
    elif not cert and not gateway.plain_http:
        problems.append((
            "gateway_tls_cert_file", None,
            "must be set (with gateway_tls_key_file) for the gateway's TLS, or set "
            "gateway_plain_http = True to serve plain HTTP, or gateway_mode = 'off'",
        ))  # fmt: skip
    ports = {server.port for server in config.vllm.servers()}
    for server in config.vllm.servers():
        backend = server.port + gateway.backend_port_offset
        if backend > 65535 or backend in ports:
            problems.append((
                "gateway_backend_port_offset", gateway.backend_port_offset,
                f"puts {server.container}'s loopback port at {backend}: it must be at most "
                "65535 and no server's own port",
            ))  # fmt: skip
    return problems


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
