## The vLLM readiness gate (operations/vllm/__init__.py, ready_script): waits until
## container @NAME@ answers /health and lists @SERVED@ in /v1/models, or fails with its last
## @LINES@ log lines. @KEY_TO_CURL@: shell (key_to_curl) that reads the API key from
## "$secrets" and pipes it to curl's config on stdin.
# shellcheck disable=SC2034  # $secrets is read by @KEY_TO_CURL@
name=@NAME@ url=@URL@ secrets=@SECRETS@ served=@SERVED@ timeout=@TIMEOUT@
fail() {
  echo "$name: $1; its last log lines:" >&2
  docker logs --tail @LINES@ "$name" 2>&1 | sed 's/^/  | /' >&2
  exit 1
}
api() {  # with the API key, never on a command line (key_to_curl)
  @KEY_TO_CURL@curl -sS --max-time 5 -K - "$url$1" 2>/dev/null
}
deadline=$(( $(date +%s) + timeout ))
while :; do
  # shellcheck disable=SC2046  # the status and the count, one word each
  set -- $(docker inspect --format '{{.State.Status}} {{.RestartCount}}' "$name" 2>/dev/null)
  case "${1:-gone}" in exited|dead|gone) fail "the container stopped (${1:-gone})";; esac
  [ "${2:-0}" = 0 ] || fail "the container restarted $2 time(s)"
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/health")" = 200 ] &&
     api /v1/models | tr -d ' \n' | grep -qF "\"id\":\"$served\""; then
    echo "$name: ready, serving $served"; exit 0
  fi
  [ "$(date +%s)" -lt "$deadline" ] ||
    fail "not ready after ${timeout}s (/health 200 and $served in /v1/models)"
  sleep 2
done
