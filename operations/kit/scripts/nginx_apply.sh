## Put the staged gateway config in place once `nginx -t` accepts the whole nginx config with
## it, then reload nginx (or start it); a refusal puts the previous file back, leaves the
## running nginx as it was and fails the host quoting nginx (operations/gateway/__init__.py).
## @MODE@ remove: take the config away instead, and reload. A reload only signals nginx: it
## returns before the new workers serve, and nginx's master starts them, waits 100 ms, and
## only then tells the old ones to quit, so for a while both take connections (a TLS client
## then met the old plain-HTTP worker, seen on the lab). This waits (bounded, 10 s) until
## workers started after the signal exist and every old one is gone or titled "shutting
## down", which nginx sets as it closes their listening sockets (they finish their streams).
## @STAGED@, @LIVE@, @PREV@: the files' paths.
workers() { m=$(cat /run/nginx.pid 2>/dev/null) && [ -n "$m" ] &&
  cat "/proc/$m/task/$m/children" 2>/dev/null; }
fresh() { for p in $(workers); do case "$old" in *" $p "*) ;; *) return 0;; esac; done
  return 1; }
old_serving() { for p in $old; do
    title=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
    case "$title" in ''|*"shutting down"*) ;; *) return 0;; esac
  done; return 1; }
reload() { old=" $(workers | tr '\n' ' ') "
  systemctl reload nginx || return 1
  i=0; until fresh && ! old_serving; do
    i=$((i+1)); [ $i -ge 50 ] && break; sleep 0.2; done; }
# shellcheck disable=SC2050  # @MODE@ is apply or remove once rendered
if [ @MODE@ = remove ]; then
  rm -f @LIVE@
  if systemctl is-active --quiet nginx; then reload || exit 1; fi
  exit 0
fi
if [ -e @LIVE@ ]; then cp -p @LIVE@ @PREV@; had=yes; else had=no; fi
mv -f @STAGED@ @LIVE@
if ! out=$(nginx -t 2>&1); then
  if [ $had = yes ]; then mv -f @PREV@ @LIVE@; else rm -f @LIVE@; fi
  echo "gateway config not changed: nginx -t refused it: $(echo "$out" | tr '\n' ' ')" >&2
  exit 1
fi
rm -f @PREV@
if systemctl is-active --quiet nginx; then
  reload || { echo "nginx did not reload the gateway config" >&2; exit 1; }
else
  systemctl start nginx || { echo "nginx did not start with the gateway config" >&2; exit 1; }
fi
