"""Take every host of an inventory through the serving stack, layer by layer.

    pyinfra inventory/prod.py deploy.py                              # all layers
    pyinfra inventory/prod.py deploy.py --data deploy_layers=driver  # a subset
    pyinfra inventory/prod.py deploy.py --limit gpu_servers --dry    # plan only

Before anything is planned on any host, the config of every targeted host is validated
(operations.run); one bad value stops the run with an error naming host, key and value.
Every command, transfer and fact read on a host is bounded (operations.kit.bounds): a host that
stops answering, or whose facts cannot be read, fails alone with the reason while the
others go on. Preflight always runs and gates the other layers; then the compatibility gates
(operations.gates: driver CUDA vs the vLLM image, the toolkit's security floor, fabric manager
vs driver) fail a host that does not fit, before any change; the layers run in stack order,
after the package manager is made ready (apt waits for a held lock; an interrupted dpkg run
is finished). Before that, the run takes the host's deploy lock (operations.kit.lock) and holds
it until it disconnects: a second deploy waits for it, then fails that host naming the
holder.
"""

from contextlib import suppress

from pyinfra import host, state
from pyinfra.context import ctx_host, ctx_state

from operations import docker, driver, gates, gateway, monitoring, preflight, toolkit, vllm
from operations.kit import bounds, lock
from operations.kit.packages import package_manager_ready
from operations.run import host_config, summarise_at_exit


def serve(config, profile) -> None:
    """Layer 4: the vLLM servers, then the gateway in front of them (operations.gateway); with
    the gateway off, its config goes first, so that the servers can take their ports back."""
    if config.gateway.enabled(config.vllm.bind_address):
        vllm.apply(config, profile)
        gateway.apply(config, profile)
    else:
        gateway.apply(config, profile)
        vllm.apply(config, profile)


LAYERS = {
    "driver": driver.apply,
    "docker": docker.apply,
    "toolkit": toolkit.apply,
    "vllm": serve,
    "monitoring": monitoring.apply,
}


def plan() -> None:
    """Plan this host's layers: preflight, then the configured layers it lets through."""
    profile = preflight.run(config)
    if profile is None:
        return
    if not gates.check(config, profile):  # a gate refused this host: failed, nothing planned
        return
    if set(LAYERS) & set(config.deploy.layers):  # every layer installs packages
        if not lock.take(config):  # another run holds this host: failed, nothing planned
            return
        proxy = str(config.deploy.apt_proxy) if config.deploy.apt_proxy else None
        bypass = tuple(config.deploy.apt_proxy_bypass)
        package_manager_ready(config.deploy.lock_timeout_s, profile, proxy, bypass)
    for layer, apply in LAYERS.items():
        if layer in config.deploy.layers:
            apply(config, profile)


config = host_config(state, host)
summarise_at_exit(state)
bounds.install(ctx_state.get(), ctx_host.get(), config)
with suppress(bounds.HostStopped):  # a fact could not be read: failed, the reason logged
    plan()
