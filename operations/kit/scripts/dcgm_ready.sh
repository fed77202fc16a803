## Waits until container @NAME@ (dcgm-exporter) answers @URL@ with DCGM metrics, or fails
## with its last log lines (operations/monitoring/exporters.py). It needs the driver through
## the NVIDIA runtime: without a GPU it exits at once, saying so in its log.
# shellcheck disable=SC2170  # @TIMEOUT@ is a number once rendered
name=@NAME@ url=@URL@ timeout=@TIMEOUT@
fail() {
  echo "$name: $1; its last log lines:" >&2
  docker logs --tail 20 "$name" 2>&1 | sed 's/^/  | /' >&2
  exit 1
}
deadline=$(( $(date +%s) + timeout ))
while :; do
  status=$(docker inspect --format '{{.State.Status}}' "$name" 2>/dev/null || echo gone)
  case $status in exited|dead|gone) fail "the container stopped ($status)";; esac
  if curl -sS --max-time 5 "$url" 2>/dev/null | grep -q '^DCGM_FI_'; then
    echo "$name: serving DCGM metrics at $url"; exit 0
  fi
  [ "$(date +%s)" -lt "$deadline" ] || fail "no DCGM metric at $url after ${timeout}s"
  sleep 2
done
