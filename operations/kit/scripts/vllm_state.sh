## VllmState (operations/vllm/facts.py): the containers labelled @LABEL@ as `docker
## inspect` JSON and the files of @SECRETS_DIR@, as key=value lines.
ids=$(docker ps -aq --filter label=@LABEL@ 2>/dev/null) && echo docker=up || echo docker=down
# shellcheck disable=SC2086  # $ids: one container id per word
[ -z "$ids" ] || docker inspect --format 'container={{json .}}' $ids
for f in @SECRETS_DIR@/*.env; do
  [ -f "$f" ] && echo "secrets=$(sha256sum "$f")" && echo "owner=$(stat -c %U:%G:%a "$f") $f"
  [ -f "$f" ] || [ ! -e "$f" ] || echo "notfile=$f"
done
for f in @SECRETS_DIR@/*.ready; do
  [ -f "$f" ] && echo "ready=$(head -c 64 "$f" | tr -dc 0-9a-f) $f"
done
for f in @SECRETS_DIR@/* @SECRETS_DIR@/.[!.]*; do
  case "$f" in *.env|*.ready) ;; *) [ ! -e "$f" ] || echo "stray=$f";; esac
done
true
