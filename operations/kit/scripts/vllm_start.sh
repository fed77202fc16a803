## start_server: start a new vLLM container (@RUN@: its whole `docker run` command line).
## Docker (20.10 seen) can come back from a host killed mid-replacement holding the server's
## host port (@PORT@) for a container that no longer exists ("port is already allocated"), and
## no start succeeds until dockerd restarts. Then, where live-restore keeps the running
## containers through a restart, dockerd is restarted once and the start retried; elsewhere
## the host fails saying what to do (operations/vllm/__init__.py).
# shellcheck disable=SC2016  # @RUN@ holds single-quoted words once rendered
start_server() {
  err=$(@RUN@ 2>&1 >/dev/null) && return 0
  printf '%s\n' "$err" >&2
  case $err in *"port is already allocated"*) ;; *) return 1;; esac
  [ -z "$(docker ps -q --filter publish=@PORT@)" ] || return 1
  docker rm -f @NAME@ >/dev/null 2>&1
  if [ "$(docker info --format '{{.LiveRestoreEnabled}}' 2>/dev/null)" != true ]; then
    echo "dockerd holds port @PORT@ for no container (a stale allocation): restart Docker" \
      "on this host (live-restore is off: gpufleet does not stop its containers)" >&2
    return 1
  fi
  echo "dockerd holds port @PORT@ for no container (a stale allocation): restarting" \
    "dockerd (live-restore keeps the running containers)" >&2
  systemctl restart docker.service || return 1
  i=0; until docker info >/dev/null 2>&1; do
    i=$((i+1)); [ $i -ge 60 ] && return 1; sleep 1; done
  @RUN@ >/dev/null
}
