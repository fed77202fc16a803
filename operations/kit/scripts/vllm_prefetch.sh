## Weights before swaps (operations/vllm/__init__.py, prefetch_command): fetch model @MODEL@
## into the host's Hugging Face cache before container @NAME@ is (re)created, with the new
## image's own huggingface_hub in a one-shot container (@RUN@: its `docker run --rm` words,
## each quoted; the secrets file is mounted and sourced by the server's wrapper, so the token
## is in no command line, no container environment and no output), within @TIMEOUT@ seconds.
## The running server is not touched. On failure only the tool's last line is shown.
name=@NAME@ model=@MODEL@ timeout=@TIMEOUT@
job="$name.prefetch"
docker rm -f "$job" >/dev/null 2>&1 || true  # one a lost connection left
log=$(mktemp) || exit 1
started=$(date +%s)
# -k: the client is killed when the container ignores SIGTERM (python as PID 1 does)
timeout -k 10 "$timeout" @RUN@ >"$log" 2>&1
status=$?
if [ "$status" = 0 ]; then
  rm -f "$log"
  echo "$name: $model is in the model cache (pre-fetch took $(( $(date +%s) - started ))s)"
  exit 0
fi
docker rm -f "$job" >/dev/null 2>&1 || true  # timeout stops the client, not the container
last=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c 1-400)
rm -f "$log"
kept="the running server was left as it was"
took=$(( $(date +%s) - started ))
if [ "$status" = 124 ] || { [ "$status" = 137 ] && [ "$took" -ge "$timeout" ]; }; then
  echo "$name: the pre-fetch of $model did not finish within ${timeout}s (vllm_prefetch_timeout_s); $kept" >&2
else
  echo "$name: the pre-fetch of $model failed (status $status): ${last:-no output}; $kept" >&2
fi
exit 1
