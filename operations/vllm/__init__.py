"""Layer 4: vLLM's OpenAI-compatible server, one container per configured instance.

Why an operation of our own: pyinfra's ``docker.container`` has no GPU, IPC or log flags and
never recreates a container whose spec changed. Here each container carries a label with the
hash of everything it was created from (its full ``docker run`` argument list, and on GPU
hosts the driver and container toolkit it was created under: see "Driver and toolkit
changes" below); a run recreates exactly the containers whose hash, secrets or state
differ, and changes nothing else. What a host gets, in order:

1. ``curl`` (the readiness probe) and the Hugging Face cache directory, which is a host path
   so downloaded models survive every recreation and image upgrade.
2. The pinned image, pulled (pyinfra's ``docker.image``) before any running container is
   replaced, so a failed pull leaves the old server serving. vLLM's compile cache
   (``VLLM_CACHE_ROOT``) is a host path too (``vllm_compile_cache_dir``, root-only 0700), so
   compiled graphs survive recreations like the models.
3. Containers of instances no longer configured are removed, with their secrets files, first:
   a new instance may take over a retired one's port or GPUs.
4. Per instance, a root-only secrets file (``/etc/gpufleet/vllm/<name>.env``, 0600 in a 0700
   directory) holding ``HF_TOKEN`` and ``VLLM_API_KEY`` from the controller. It is bind-mounted
   read-only and sourced by a ``/bin/sh`` wrapper before ``exec vllm serve``, so the values are
   in no command line, in no pyinfra output (uploaded as a file, never diffed) and in no
   ``docker inspect`` field (``Config.Env`` holds only non-secret variables). The mount is
   ``--mount type=bind``, not ``--volume``: should the file be missing when Docker starts the
   container (restart policy, daemon restart), ``--volume`` makes an empty directory in its
   place and the server starts without its API key, open to anyone; ``--mount`` refuses to
   start it, and the wrapper refuses a secrets path that is not a file. A directory that an
   older ``--volume`` container left there is removed when the file is written.
5. Weights before swaps: before a container is (re)created, its model is fetched into the
   cache by a one-shot ``docker run --rm`` of the NEW image (its own huggingface_hub, so
   the cache layout is the one that image's vLLM reads; real images and the STAND-IN both
   ship it), with the secrets file mounted and sourced by the same wrapper as the server: the
   token is in no argv, no ``Config.Env`` and no output (the host script prints only the
   tool's last line, on failure). The old server keeps serving meanwhile; the fetch is
   bounded by ``vllm_prefetch_timeout_s`` and on failure or timeout the host fails with
   that last line, the old container untouched (operations/kit/scripts/vllm_prefetch.sh).
   Nothing is fetched for an instance that is not (re)created: a no-change deploy adds no
   command. With ``vllm_hf_offline`` (default) servers run with ``HF_HUB_OFFLINE=1``: they
   load only from the cache the pre-fetch filled and a restart never depends on the Hub
   (part of the spec: changing it recreates).
6. The container (re)created when needed, then gated on readiness: ``/health`` answers 200 and
   ``/v1/models`` lists the served name (with the API key), within ``vllm_ready_timeout_s``.
   A container that exits or restarts meanwhile, or never gets ready, fails this host with
   its last log lines. Only a passed gate writes the readiness mark
   (``/etc/gpufleet/vllm/<name>.ready``: the spec hash; a label cannot change after ``docker
   run``): a server whose spec is not marked ready is never converged, the next run gates it
   again (no recreation: a first model download may just have outlasted the timeout).
7. A recreation never removes a proven server (one marked ready) before its replacement is:
   it is stopped (freeing the port) and renamed ``vllm-<name>.previous``; once the new one is
   ready it is removed. When the new one fails, it is removed, the previous one is renamed
   back, started and gated again, and the host fails saying it was rolled back. A run that died
   mid-way may leave ``vllm-<name>.previous`` and no current container (the host serves
   nothing meanwhile): the next run keeps it the same way, so it is removed only once a new
   server is ready, restored otherwise. A server that never passed the gate is not kept.
8. The secrets' temporary file is removed on every path; one a lost connection left is removed
   by the next run (and reported by verify).
9. Replacing a serving server (its stop to the new one's readiness) is one command that holds
   one of the run's ``vllm_max_unavailable`` slots (operations.kit.throttle): a plain deploy never
   takes the whole fleet's servers down together. The readiness gate is fenced
   (operations.kit.lock.fenced): it is stopped should the run's connection go first.

Driver and toolkit changes. A GPU container keeps the driver files the runtime put in it
when it was created (libcuda, libnvidia-ml and the rest, mounted by the NVIDIA Container
Toolkit, plus the mount points it made in the container's own filesystem): after a driver
upgrade every container with GPU access has to be restarted or it holds stale references to
the previous driver's files (NVIDIA/gpu-operator#416, "Driver won't fully start without
manually draining node"), and a container only restarted keeps the old driver's files as
empty stand-ins beside the new ones (NVIDIA/libnvidia-container#50). So on GPU hosts the spec
hash covers, besides the ``docker run`` arguments, the driver version the host runs
(operations.driver.facts.loaded_driver, the reader the toolkit layer's CDI check uses too)
and the toolkit's installed packages (operations.toolkit.facts.toolkit_version): a change of
either recreates the containers, with the same keep-and-roll-back and throttle as any other
recreation. The arguments themselves are unchanged; a host with neither (no GPUs, no driver,
no toolkit) hashes its arguments alone, as before, so it is never recreated for this.

When: the label and the readiness mark are written with the versions read as the
recreation executes (an operation's facts are read again then), so they are what the next
run's planning facts read, and a converged host plans no change. A toolkit upgrade in this
run (its install is planned: operations.toolkit.runtime_changes) adds each instance's
operation on the condition that the install changed something; it then decides again on
the host's facts of that moment and recreates in the same run (a first run on a GPU host
creates its servers after the toolkit, under the new versions). A driver change is seen in
the run whose facts first name it: the driver layer loads a new driver only by rebooting the
host, which the facts of this run's planning predate, so its servers are recreated by the
next run (and the CDI spec regenerated in that same run, operations.toolkit); a preinstalled
driver changed outside the deploy, by the first run after it.

Rolling a change through a fleet a few hosts at a time: ``python -m operations.cli.rollout``.
"""

from __future__ import annotations

import hashlib
import json
from io import StringIO
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, deploy, operation
from pyinfra.facts.docker import DockerImage
from pyinfra.operations import dnf, docker, files

from operations import toolkit
from operations.config.model import FleetConfig, VllmInstance
from operations.config.secrets import Sealed, env_file, vllm_secrets
from operations.docker.facts import ContainerStack
from operations.driver.facts import DriverState, loaded_driver
from operations.kit import bounds, converged, lock, scripts, throttle
from operations.kit.common import local_url_host, url_host
from operations.kit.quoting import (
    container_value,
    image_reference,
    shell,
    shell_join,
    shell_say,
    volume_source,
)
from operations.kit.throttle import Throttled
from operations.platform import family_of
from operations.toolkit.facts import toolkit_version
from operations.vllm.facts import LABEL, PREVIOUS, SECRETS_DIR, SPEC_LABEL, VllmState, ready_path

converged.managed(SECRETS_DIR)

CONTAINER_PORT = 8000
CONTAINER_HF_HOME = "/root/.cache/huggingface"
CONTAINER_VLLM_CACHE = "/root/.cache/vllm"  # VLLM_CACHE_ROOT, bind-mounted from the host
PREFETCH = ".prefetch"  # suffix of the one-shot pre-fetch container's name
# The pre-fetch in the new image: huggingface_hub's snapshot_download (in every vLLM image,
# whatever its CLI is called: `huggingface-cli` before 0.34, `hf` since), token from $HF_TOKEN
# (the secrets file the wrapper sourced), cache from $HF_HOME.
PREFETCH_CODE = (
    "import sys; from huggingface_hub import snapshot_download; "
    "print(snapshot_download(sys.argv[1]))"
)
SECRETS_IN_CONTAINER = "/run/gpufleet/secrets.env"
# Loads the secrets into the server's environment, then becomes the server (PID 1 stays it).
# A secrets path that is not a file stops it: sh's `.` reads a directory as empty, and the
# server would start without its API key.
WRAPPER = (
    f"[ -f {SECRETS_IN_CONTAINER} ] || {{ echo 'gpufleet-vllm: no secrets file at "
    f"{SECRETS_IN_CONTAINER}: not starting without it' >&2; exit 78; }}; "
    f'set -a; . {SECRETS_IN_CONTAINER}; set +a; exec "$@"'
)
# The one OS difference of this layer: how curl is installed, per package-manager family.
PACKAGES = {"apt": converged.apt_install, "dnf": dnf.packages}
LOG_LINES = 30  # of a failed container's log, quoted in the error


def engine_args(server: VllmInstance) -> list[str]:
    """``vllm serve`` and its arguments for one instance (in the container). Each value is one
    argument (the wrapper passes them on as "$@"); one that would read as an option is refused.
    ``extra_args`` are options by design and go last."""
    model = container_value(server.model, "vllm_model")
    args = ["vllm", "serve", model, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
    args += ["--served-model-name", container_value(server.served_name, "vllm_served_model_name")]
    args += ["--tensor-parallel-size", str(server.tensor_parallel_size)]
    args += ["--gpu-memory-utilization", str(server.gpu_memory_utilization)]
    args += ["--dtype", container_value(server.dtype, "vllm_dtype")]
    if server.max_model_len:
        args += ["--max-model-len", str(server.max_model_len)]
    if server.quantization:
        args += ["--quantization", container_value(server.quantization, "vllm_quantization")]
    return args + [shell_checked(arg, "vllm_extra_args") for arg in server.extra_args]


def shell_checked(value: str, key: str) -> str:
    """``value`` unchanged once it is known to fit on a command line (no NUL)."""
    shell(value, key)
    return value


def _publish(address: Any, port: int) -> str:
    return f"{url_host(address)}:{port}:{CONTAINER_PORT}"


def _gpu_flags(config: FleetConfig, server: VllmInstance) -> list[str]:
    """--gpus for GPU hosts (all, or "device=0,1"); GPU-less hosts (the lab) get none."""
    if not config.host.has_gpus:
        return []
    if server.gpus == "all":
        return ["--gpus", "all"]
    return ["--gpus", '"device=' + ",".join(map(str, server.gpus)) + '"']


def container_args(config: FleetConfig, server: VllmInstance) -> list[str]:
    """Everything ``docker run`` gets for one instance, but the spec label (whose value is
    the hash of this list and the host's Runtime: spec_of)."""
    vllm, docker_config = config.vllm, config.docker
    shm = container_value(vllm.shm_size, "vllm_shm_size")
    ipc = ["--ipc", "host"] if vllm.ipc_host else ["--shm-size", shm]
    cache = volume_source(vllm.hf_cache_dir, "vllm_hf_cache_dir")
    compiled = volume_source(vllm.compile_cache_dir, "vllm_compile_cache_dir")
    image = image_reference(vllm.image, "vllm_image")
    offline = ["--env", "HF_HUB_OFFLINE=1"] if vllm.hf_offline else []
    return [
        "--name", container_value(server.container, "vllm_instances.name"),
        "--label", f"{LABEL}={server.name}",
        "--restart", container_value(vllm.restart_policy, "vllm_restart_policy"),
        "--log-driver", "json-file",
        "--log-opt", f"max-size={docker_config.log_max_size}",
        "--log-opt", f"max-file={docker_config.log_max_file}",
        *_gpu_flags(config, server),
        *ipc,
        "--publish", _publish(*config.gateway.published(vllm.bind_address, server.port)),
        "--volume", f"{cache}:{CONTAINER_HF_HOME}",
        "--volume", f"{compiled}:{CONTAINER_VLLM_CACHE}",
        "--mount", secrets_mount(server),
        "--env", f"HF_HOME={CONTAINER_HF_HOME}",
        "--env", f"VLLM_CACHE_ROOT={CONTAINER_VLLM_CACHE}",
        *offline,
        "--entrypoint", "/bin/sh",
        image,
        "-c", WRAPPER, "gpufleet-vllm",
        *engine_args(server),
    ]  # fmt: skip


def prefetch_args(config: FleetConfig, server: VllmInstance) -> list[str]:
    """``docker run`` arguments of the one-shot pre-fetch of one instance's model: the NEW
    image, the cache mounted as the server mounts it, the secrets file mounted and sourced by
    the server's wrapper (the token never on a command line or in ``Config.Env``), online
    whatever the server's ``vllm_hf_offline``. No port, no GPU, no label (not a server)."""
    vllm = config.vllm
    cache = volume_source(vllm.hf_cache_dir, "vllm_hf_cache_dir")
    model = container_value(server.model, "vllm_model")
    return [
        "docker", "run", "--rm",
        "--name", container_value(server.container + PREFETCH, "vllm_instances.name"),
        "--volume", f"{cache}:{CONTAINER_HF_HOME}",
        "--mount", secrets_mount(server),
        "--env", f"HF_HOME={CONTAINER_HF_HOME}",
        "--env", "HF_HUB_OFFLINE=0",
        "--env", "HF_HUB_DISABLE_PROGRESS_BARS=1",
        "--entrypoint", "/bin/sh",
        image_reference(vllm.image, "vllm_image"),
        "-c", WRAPPER, "gpufleet-vllm",
        "python3", "-c", PREFETCH_CODE, model,
    ]  # fmt: skip


def prefetch_command(config: FleetConfig, server: VllmInstance) -> StringCommand:
    """The pre-fetch (operations/kit/scripts/vllm_prefetch.sh) as one command: the host
    fails with the tool's last line when it fails or outlasts vllm_prefetch_timeout_s, before
    the running server is touched."""
    timeout = config.vllm.prefetch_timeout_s
    script = scripts.render(
        "vllm_prefetch",
        NAME=server.container,
        MODEL=server.model,
        TIMEOUT=timeout,
        keys={"NAME": "vllm_instances.name", "MODEL": "vllm_model"},
        raw_values={"RUN": shell_join(prefetch_args(config, server), "vllm pre-fetch argument")},
    )
    return StringCommand(script, _timeout=timeout + config.deploy.timeout_margin_s)


class Runtime(NamedTuple):
    """What the host's container runtime puts in a GPU container, as read at one moment: the
    driver version the host runs and the installed container toolkit ("" for none)."""

    driver: str = ""
    toolkit: str = ""


NO_RUNTIME = Runtime()


def runtime_of(config: FleetConfig) -> Runtime:
    """The host's Runtime: the driver layer's and the Docker layer's facts (read once while
    planning, afresh by an operation as it executes: converged.planned). A GPU-less host's is
    empty whatever is installed: its containers get no GPU, so no driver file goes stale."""
    if not config.host.has_gpus:
        return NO_RUNTIME
    driver = loaded_driver(converged.planned(DriverState)) or ""
    return Runtime(driver, toolkit_version(converged.planned(ContainerStack)) or "")


def spec_hash(args: list[str], runtime: Runtime) -> str:
    """Short stable hash of a container's arguments and the runtime it is created under: its
    spec label and readiness mark. With no runtime (no GPUs, or no driver and no toolkit),
    the arguments' hash alone, as before the runtime counted."""
    material: Any = args
    if runtime != NO_RUNTIME:
        material = {"args": args, "driver": runtime.driver, "toolkit": runtime.toolkit}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def spec_of(config: FleetConfig, server: VllmInstance, runtime: Runtime) -> str:
    """The spec one instance's container has when created now under ``runtime``."""
    return spec_hash(container_args(config, server), runtime)


def secrets_path(server: VllmInstance) -> str:
    return f"{SECRETS_DIR}/{server.name}.env"


def secrets_mount(server: VllmInstance) -> str:
    """The secrets file's ``--mount``: a bind that Docker refuses to start when its source is
    missing (``--volume`` would make a directory there and start the server without it).
    The path holds no ',' or '=' (the instance name is checked), so no CSV quoting is needed."""
    return f"type=bind,source={secrets_path(server)},target={SECRETS_IN_CONTAINER},readonly"


def probe_address(config: FleetConfig, address: Any = None) -> str:
    """Where the host itself reaches the API published on ``address`` (default: the bind
    address): that address, or loopback for any-address."""
    return local_url_host(address or config.vllm.bind_address)


def probe_url(config: FleetConfig, server: VllmInstance) -> str:
    """The server's own API as the host reaches it: behind the gateway, its loopback port."""
    address, port = config.gateway.published(config.vllm.bind_address, server.port)
    return f"http://{probe_address(config, address)}:{port}"


def key_to_curl(secrets: str) -> str:
    """Shell that hands ``curl -K -`` the API key of a secrets file as an Authorization header
    on its stdin (printf is a shell builtin), so the key is never on a command line; nothing
    when the file holds no key. ``secrets`` is a shell word (quoted path or "$var")."""
    return (
        f'( set -a; . {secrets}; [ -z "$VLLM_API_KEY" ] || '
        'printf \'header = "Authorization: Bearer %s"\\n\' "$VLLM_API_KEY" ) | '
    )


def ready_script(config: FleetConfig, server: VllmInstance, url: str | None = None) -> str:
    """Shell that waits until the instance serves at ``url`` (default: where it is published
    now, probe_url), or fails with its last log lines (operations/kit/scripts/vllm_ready.sh)."""
    return scripts.render(
        "vllm_ready",
        NAME=server.container,
        URL=url or probe_url(config, server),
        SECRETS=secrets_path(server),
        SERVED=server.served_name,
        TIMEOUT=config.vllm.ready_timeout_s,
        LINES=LOG_LINES,
        keys=_READY_KEYS,
        raw_values={"KEY_TO_CURL": key_to_curl('"$secrets"')},
    )


_READY_KEYS = {"NAME": "vllm_instances.name", "SERVED": "vllm_served_model_name"}


def cache_space_guard(config: FleetConfig, server: VllmInstance) -> str:
    """Shell that fails the host, before the running server is touched, when the model cache's
    filesystem has less than vllm_min_free_cache_gib free (a download would fill it)."""
    vllm = config.vllm
    need_kib = int(vllm.min_free_cache_gib * 1024**2)
    cache = shell(vllm.hf_cache_dir, "vllm_hf_cache_dir")
    said = shell_say(
        shell(f"{server.container}: only "),
        '"$((free / 1024))"',
        shell(
            f" MiB free for the model cache at {vllm.hf_cache_dir}; vllm_min_free_cache_gib "
            f"needs {vllm.min_free_cache_gib:g} GiB: the running server was left as it was",
            "vllm_hf_cache_dir",
        ),
    )
    return (
        f"free=$(df -Pk {cache} | awk 'NR == 2 {{ print $4 }}'); "
        f'[ "${{free:-0}}" -ge {need_kib} ] || {{ {said}; exit 1; }}'
    )


class SecretUpload(FileUploadCommand):
    """A file upload that removes its target when the write fails (a partial file may hold
    part of a secret): pyinfra runs no further command of an operation that failed."""

    def execute(self, state, host, connector_arguments):
        done = False
        try:
            done = super().execute(state, host, connector_arguments)
        finally:
            if not done:
                host.run_shell_command(StringCommand(f"rm -f {shell(self.dest)}"))
        return done


def _upload_secrets(path: str, content: str):
    """Upload beside the target, make it 0600, then move it in: the directory is 0700, so the
    content is never readable by another user, and never printed (files.put's --diff would).
    The temporary file is removed on every path: a failed write (SecretUpload), a failed
    chmod or move (the shell below); one a lost connection left is a stray (VllmState) that
    the next run removes and verify reports. A directory at the target (what ``--volume``
    makes when the file is missing as a container starts) is removed first: ``mv`` would move
    the file into it."""
    temp = f"{path}.new"
    yield SecretUpload(StringIO(content), temp, remote_temp_filename=temp)
    target = shell(path)
    yield StringCommand(
        f"{{ [ ! -d {target} ] || rm -rf -- {target}; }} && "
        f"chmod 600 {shell(temp)} && mv -f {shell(temp)} {target} || "
        f"{{ rm -f {shell(temp)}; exit 1; }}"
    )


class Needs(NamedTuple):
    """What one instance needs, against a VllmState: ``action`` is "none", "cleanup" (remove
    the kept previous server), "gate" (the container has the spec but never passed the
    readiness gate: gate it again) or "recreate"; ``keep`` the inspect JSON of the server to
    roll back to (the proven one the recreation replaces, or one a crashed run kept)."""

    spec: str
    secrets: bool
    action: str
    keep: dict[str, Any] | None


def _proven(state: dict[str, Any], server: VllmInstance) -> dict[str, Any] | None:
    """The instance's container when its spec passed the readiness gate (its readiness mark):
    the server a recreation keeps to roll back to, whatever its state now."""
    current = state["containers"].get(server.name)
    labels = (current or {}).get("Config", {}).get("Labels") or {}
    ready = state["ready"].get(server.name)
    return current if ready and labels.get(SPEC_LABEL) == ready else None


def needs(
    state: dict[str, Any], config: FleetConfig, server: VllmInstance, content: str,
    runtime: Runtime,
) -> Needs:  # fmt: skip
    """What one instance needs (see Needs), its spec taken under ``runtime``. A server that is
    not marked ready never counts as converged: a run whose readiness gate failed is gated
    again by the next one. A kept previous server with no current one (a run that died
    mid-way) is kept again: the new server replaces it once ready, or it is restored."""
    spec = spec_of(config, server, runtime)
    digest = hashlib.sha256(content.encode()).hexdigest()
    new_secrets = state["secrets"].get(secrets_path(server)) != digest
    proven = _proven(state, server)
    previous = state["previous"].get(server.name)
    current = state["containers"].get(server.name, {})
    has_spec = (current.get("Config", {}).get("Labels") or {}).get(SPEC_LABEL) == spec
    running = current.get("State", {}).get("Status") == "running"
    if running and has_spec and not new_secrets:
        if proven:
            return Needs(spec, False, "cleanup" if previous else "none", None)
        return Needs(spec, False, "gate", previous)
    return Needs(spec, new_secrets, "recreate", proven or previous)


def retired_in(state: dict[str, Any], keep: list[str]) -> tuple[list[str], list[str]]:
    """(instances no longer configured that have a container, kept or not; their files:
    secrets files and readiness marks)."""
    gone = sorted((set(state["containers"]) | set(state["previous"])) - set(keep))
    files = [*state["secrets"], *state["not_files"], *(ready_path(n) for n in state["ready"])]
    stale = [path for path in files if PurePosixPath(path).stem not in keep]
    return gone, sorted(stale)


def _mark_ready(server: VllmInstance, spec: str) -> str:
    return f"printf '%s\\n' {shell(spec)} > {shell(ready_path(server.name))}"


def _as_started(server: VllmInstance, inspect: dict[str, Any]) -> VllmInstance:
    """``server`` with the served name and host port the container ``inspect`` was created
    with (a rollback waits for the previous server as it was, not as configured now)."""
    args = inspect.get("Args") or []
    update: dict[str, Any] = {}
    if "--served-model-name" in args[:-1]:
        update["served_model_name"] = args[args.index("--served-model-name") + 1]
    bindings = (inspect.get("HostConfig", {}).get("PortBindings") or {}).get(
        f"{CONTAINER_PORT}/tcp"
    ) or [{}]
    if str(bindings[0].get("HostPort", "")).isdigit():
        update["port"] = int(bindings[0]["HostPort"])
    return server.model_copy(update=update)


def _started_url(config: FleetConfig, inspect: dict[str, Any]) -> str | None:
    """Where the container ``inspect`` was published (its API as the host reaches it), or
    None when its bindings do not say."""
    bindings = (inspect.get("HostConfig", {}).get("PortBindings") or {}).get(
        f"{CONTAINER_PORT}/tcp"
    ) or [{}]
    port, address = str(bindings[0].get("HostPort", "")), bindings[0].get("HostIp") or "0.0.0.0"
    if not port.isdigit():
        return None
    try:
        return f"http://{probe_address(config, address)}:{port}"
    except ValueError:
        return None


def _keep_previous(server: VllmInstance, proven: bool) -> str:
    """Shell that stops the instance's proven server (it frees the port) and keeps it as
    ``<container>.previous`` (replacing an older kept one), or removes a server that never
    passed the gate. A failed rename starts the server again and fails the host."""
    name, previous = shell(server.container), shell(server.container + PREVIOUS)
    remove = f"docker rm -f {name} >/dev/null 2>&1 || true"
    if not proven:
        return remove
    return (
        f"if docker inspect {name} >/dev/null 2>&1; then\n"
        f"  docker rm -f {previous} >/dev/null 2>&1 || true\n"
        f"  docker stop {name} >/dev/null || exit 1\n"
        f"  docker rename {name} {previous} || {{ docker start {name} >/dev/null; exit 1; }}\n"
        f"fi\n{remove}"
    )


def _rollback(config: FleetConfig, server: VllmInstance, keep: dict[str, Any]) -> str:
    """Shell run when the new server failed: remove it, start the kept one under its name
    again (marked ready first: a crash here leaves it the one to keep), wait until it serves
    (the same gate) and fail the host saying it was rolled back."""
    name, previous = shell(server.container), shell(server.container + PREVIOUS)
    spec = (keep.get("Config", {}).get("Labels") or {}).get(SPEC_LABEL, "")
    old = ready_script(config, _as_started(server, keep), _started_url(config, keep))
    back = shell_say(
        shell(f"{server.container}: the new server did not get ready (above): rolled back to "
              f"the previous server (spec {spec}), which serves again")
    )  # fmt: skip
    broken = shell_say(
        shell(f"{server.container}: the new server did not get ready (above), and the "
              f"previous server (spec {spec}) did not come back either")
    )  # fmt: skip
    mark = shell(ready_path(server.name))
    return (
        f"docker rm -f {name} >/dev/null 2>&1 || true\n{_mark_ready(server, spec)}\n"
        f"if docker rename {previous} {name} && docker start {name} >/dev/null && (\n{old}\n)"
        f"; then {back}; else rm -f {mark}; {broken}; fi\nexit 1"
    )


def _start_server(config: FleetConfig, server: VllmInstance, run: str) -> str:
    """Shell defining ``start_server``: ``run``, recovering once from Docker's stale port
    allocation where that is safe (kit/scripts/vllm_start.sh)."""
    _, port = config.gateway.published(config.vllm.bind_address, server.port)
    return scripts.render("vllm_start", NAME=server.container, PORT=str(port),
                          raw_values={"RUN": run})  # fmt: skip


def _gate_script(
    config: FleetConfig, server: VllmInstance, spec: str, run: str | None,
    keep: dict[str, Any] | None,
) -> tuple[str, int]:  # fmt: skip
    """(shell that starts the new container (``run``; None: it runs already), gates it on
    readiness and marks ``spec`` ready, rolling back to ``keep`` on failure; its bound: the
    readiness bound, plus a second deadline for a rollback's wait, as bounds.restart_s)."""
    start = "start_server && " if run else ""
    define = _start_server(config, server, run) + "\n" if run else ""
    previous = shell(server.container + PREVIOUS)
    failed = _rollback(config, server, keep) if keep else "exit 1"
    script = (
        f"{define}if {start}(\n{ready_script(config, server)}\n); then\n"
        f"docker rm -f {previous} >/dev/null 2>&1 || true; {_mark_ready(server, spec)}\n"
        f"else\n{failed}\nfi"
    )
    return script, bounds.readiness_s(config) + (config.vllm.ready_timeout_s if keep else 0)


def start_and_gate(
    config: FleetConfig, server: VllmInstance, spec: str, run: str | None,
    keep: dict[str, Any] | None,
) -> StringCommand:  # fmt: skip
    """The gate (_gate_script) as one fenced command (lock.fenced: stopped should the run's
    connection go first), within its bound."""
    script, bound = _gate_script(config, server, spec, run, keep)
    return StringCommand(lock.fenced(script), _timeout=bound)


def replace_commands(
    config: FleetConfig, server: VllmInstance, spec: str, keep: dict[str, Any] | None = None,
    proven: bool = False, serving: bool = False,
) -> list[str | StringCommand]:  # fmt: skip
    """Shell that (re)creates one instance with the label ``spec`` (spec_of): the cache space
    guard, the model's pre-fetch with the new image (the old server still serving), the old
    container kept stopped as the previous server (``proven``: it passed the
    gate) or removed, its readiness mark removed, ``docker run`` (every argument one shell
    word) and the readiness gate, with the rollback to ``keep`` when it fails. Built while
    planning too (``apply``), so a value that cannot be written stops the run before any host
    changes.

    When the old server is ``serving``, everything from its stop to the new one's readiness
    is one Throttled command: at most vllm_max_unavailable hosts are in it at once."""
    run = ["docker", "run", "--detach", "--label", f"{SPEC_LABEL}={spec}",
           *container_args(config, server)]  # fmt: skip
    start = shell_join(run, "vllm container argument")
    guard, *stop = [
        cache_space_guard(config, server),
        _keep_previous(server, proven),
        f"rm -f {shell(ready_path(server.name))}",
    ]
    fetch = prefetch_command(config, server)
    if not serving:
        return [guard, fetch, *stop, start_and_gate(config, server, spec, start, keep)]
    script, bound = _gate_script(config, server, spec, start, keep)
    replace = lock.fenced(throttle.reporting("\n".join([*stop, script])))
    setting = config.vllm.max_unavailable
    margin = config.deploy.timeout_margin_s  # the old server's stop
    return [guard, fetch, Throttled(replace, server.container, setting, _timeout=bound + margin)]


@operation()
def container(config: FleetConfig, server: VllmInstance, secrets: Sealed):
    """Create or recreate one instance's container when its spec (under the host's runtime
    as read now: the versions a recreation is labelled with), its secrets or its state differ
    from the config, gate it on readiness and roll back to the previous server when it fails;
    gate again a server that never passed the gate (see the module doc)."""
    content = secrets.reveal()
    state = host.get_fact(VllmState)
    need = needs(state, config, server, content, runtime_of(config))
    if need.secrets:
        yield from _upload_secrets(secrets_path(server), content)
    if need.action == "none":
        host.noop(f"{server.container} is running with spec {need.spec}, ready")
    elif need.action == "cleanup":
        yield f"docker rm -f {shell(server.container + PREVIOUS)}"
    elif need.action == "gate":
        yield start_and_gate(config, server, need.spec, None, need.keep)
    else:
        proven = _proven(state, server)
        serving = bool(proven) and proven.get("State", {}).get("Status") == "running"
        yield from replace_commands(
            config, server, need.spec, need.keep, proven is not None, serving
        )


@operation()
def archived_image(image: str, archive: str, key: str = "vllm_image_archive"):
    """Load the image from a ``docker save`` archive on the controller when the host lacks it
    (air-gapped fleets, and the lab, which has no registry); pyinfra's docker.image only pulls.
    ``key`` names the setting the archive came from, in the error."""
    if host.get_fact(DockerImage, object_id=shell(image)):
        host.noop(f"{image} is present")
        return
    temp, load = image_load(image, archive, key)
    yield FileUploadCommand(archive, temp, remote_temp_filename=temp)
    yield load


def image_load(image: str, archive: str, key: str = "vllm_image_archive") -> tuple[str, str]:
    """(host path the archive is uploaded to, shell that loads it and checks it held ``image``)."""
    temp = f"/var/tmp/gpufleet-image-{hashlib.sha256(image.encode()).hexdigest()[:12]}.tar"
    said = shell_say(shell(f"{archive} does not hold {image}", key))
    inspect = f"docker image inspect {shell(image, key.removesuffix('_archive'))} >/dev/null 2>&1"
    return (
        temp,
        f"docker load -q -i {temp} >/dev/null; rm -f {temp}; {inspect} || {{ {said}; exit 1; }}",
    )


@operation()
def retired(keep: list[str]):
    """Remove the containers of instances no longer configured (a kept previous server too),
    their secrets files and readiness marks."""
    state = host.get_fact(VllmState)
    gone, stale = retired_in(state, keep)
    for name in gone:
        found = [state[where].get(name) for where in ("containers", "previous")]
        names = sorted(inspect["Name"].lstrip("/") for inspect in found if inspect)
        yield f"docker rm -f {shell_join(names)}"
    if stale:
        yield f"rm -rf -- {shell_join(stale)}"
    if not gone and not stale:
        host.noop("no retired vLLM instance")


@operation()
def leftovers():
    """Remove what a failed run left in the secrets directory (a temporary secrets file)."""
    strays = host.get_fact(VllmState)["strays"]
    if strays:
        yield f"rm -rf {shell_join(sorted(strays))}"
    else:
        host.noop("no leftover file")


@deploy("vLLM server")
def apply(config: FleetConfig, profile: dict[str, Any]) -> None:
    """Run every configured vLLM instance of this host, each recreated only on change and
    gated on readiness (see the module doc)."""
    secrets = env_file(vllm_secrets(config.vllm))
    install = PACKAGES[family_of(profile)]
    install(name="Install curl (the readiness probe)", packages=["curl"])
    files.directory(name="vLLM model cache", path=config.vllm.hf_cache_dir, present=True)
    files.directory(
        name="vLLM compile cache", path=config.vllm.compile_cache_dir, present=True,
        mode="700", user="root", group="root",
    )  # fmt: skip
    converged.directory(
        "vLLM secrets directory", SECRETS_DIR, mode="700", user="root", group="root"
    )
    image = image_reference(config.vllm.image, "vllm_image")  # pyinfra's facts do not quote it
    # an image on the host already is the one wanted: the image is pinned (a tag, one build)
    if not converged.planned(DockerImage, object_id=shell(image)):
        if config.vllm.image_archive:
            image_load(image, config.vllm.image_archive)  # refused now if it cannot be written
            archived_image(name=f"Load {image}", image=image, archive=config.vllm.image_archive)
        else:
            docker.image(name=f"Pull {image}", image=image, present=True)
    servers = config.vllm.servers()
    names = [server.name for server in servers]
    state = converged.planned(VllmState)  # operations below read it again as they execute
    # retired first: a new instance may take over a retired one's port or GPUs
    if state["strays"]:  # a temporary secrets file a failed run left
        leftovers(name="Remove leftover vLLM temporary files")
    if any(retired_in(state, names)):
        retired(name="Remove retired vLLM instances", keep=names)
    content = secrets.reveal()
    runtime = runtime_of(config)
    # a toolkit upgrade planned in this run: decided again once it ran (see the module doc)
    changes = toolkit.runtime_changes() if config.host.has_gpus else []
    for instance in servers:
        need = needs(state, config, instance, content, runtime)
        replace_commands(config, instance, need.spec)  # refused now, while planning, if unwritable
        name = f"vLLM {instance.container}"
        if need.action != "none":
            container(name=name, config=config, server=instance, secrets=secrets)
        elif changes:
            container(
                name=name, config=config, server=instance, secrets=secrets,
                _if=lambda: any(op.did_change() for op in changes),
            )  # fmt: skip
