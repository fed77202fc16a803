## Put the staged gateway config in place once `nginx -t` accepts the whole nginx config with
## it, then reload nginx (or start it); a refusal puts the previous file back, leaves the
## running nginx as it was and fails the host quoting nginx (operations/gateway/__init__.py).
## @STAGED@, @LIVE@, @PREV@: the files' paths.
if [ -e @LIVE@ ]; then cp -p @LIVE@ @PREV@; had=yes; else had=no; fi
mv -f @STAGED@ @LIVE@
if ! out=$(nginx -t 2>&1); then
  if [ $had = yes ]; then mv -f @PREV@ @LIVE@; else rm -f @LIVE@; fi
  echo "gateway config not changed: nginx -t refused it: $(echo "$out" | tr '\n' ' ')" >&2
  exit 1
fi
rm -f @PREV@
if systemctl is-active --quiet nginx; then
  systemctl reload nginx || { echo "nginx did not reload the gateway config" >&2; exit 1; }
else
  systemctl start nginx || { echo "nginx did not start with the gateway config" >&2; exit 1; }
fi
