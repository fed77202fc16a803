## Put the staged daemon.json and its ownership record in place; when the parsed content
## changed, restart Docker and roll back to the previous file if it does not answer
## `docker info` within @TIMEOUT@ seconds (operations/kit/daemon_json.py).
## @CORRUPT@, @RESTART@: yes or no; the others: the files' paths.
# shellcheck disable=SC2170  # @TIMEOUT@ is a number once rendered
up() { i=0; until docker info >/dev/null 2>&1; do
  i=$((i+1)); [ $i -ge @TIMEOUT@ ] && return 1; sleep 1; done; }
restart() { systemctl reset-failed docker.service 2>/dev/null
  systemctl restart docker.service && up; }
if command -v dockerd >/dev/null && dockerd --help 2>&1 | grep -q -- --validate; then
  if ! out=$(dockerd --validate --config-file @STAGED@ 2>&1); then
    rm -f @STAGED@ @STAGED_OWNED@
    echo "daemon.json not changed: dockerd --validate refused the merged file: $out" >&2; exit 1
  fi
fi
mkdir -p /etc/docker
# shellcheck disable=SC2050  # @CORRUPT@ is yes or no once rendered
[ @CORRUPT@ = yes ] && cp -p @LIVE@ @LIVE@.corrupt-"$(date +%Y%m%d%H%M%S)" && \
  echo "daemon.json was not valid JSON: kept as "@LIVE@".corrupt-*, rebuilt" >&2
if [ -e @LIVE@ ]; then cp -p @LIVE@ @PREV@; had=yes; else had=no; fi
mv -f @STAGED@ @LIVE@
# shellcheck disable=SC2050  # @RESTART@ is yes or no once rendered
if [ @RESTART@ = no ] || ! systemctl cat docker.service >/dev/null 2>&1; then
  mv -f @STAGED_OWNED@ @OWNED@; exit 0
fi
if restart; then cp -p @LIVE@ @LAST_GOOD@; mv -f @STAGED_OWNED@ @OWNED@; exit 0; fi
why=$(journalctl -u docker.service _COMM=dockerd -n 1 --no-pager -o cat 2>/dev/null \
  | tr "\n" " ")
if [ $had = yes ]; then mv -f @PREV@ @LIVE@; else rm -f @LIVE@; fi
rm -f @STAGED_OWNED@
if restart; then now="dockerd is running on the previous file"
else now="dockerd did not come back on the previous file either"; fi
echo "daemon.json rolled back: dockerd did not start with the merged file ($why); $now" >&2
exit 1
