## Put the staged Prometheus files in place once promtool accepts them, then reload a running
## Prometheus (operations/monitoring/server.py). A refusal removes the staged copy, leaves the
## live files and the running server as they were, and fails the host quoting promtool.
## @STAGED@, @LIVE@: directories; @UNIT@: the systemd unit.
if ! out=$(promtool check config @STAGED@/prometheus.yml 2>&1); then
  rm -rf @STAGED@
  echo "Prometheus config not changed: promtool check config refused it: $out" >&2; exit 1
fi
if ! out=$(promtool check rules @STAGED@/rules/*.yml 2>&1); then
  rm -rf @STAGED@
  echo "Prometheus config not changed: promtool check rules refused them: $out" >&2; exit 1
fi
mkdir -p @LIVE@/rules @LIVE@/targets
# the file_sd files first: the new config's jobs find their targets when it loads
for f in targets/node.json targets/vllm.json targets/dcgm.json rules/gpufleet.yml \
    gateway-ca.pem prometheus.yml; do
  chmod 644 @STAGED@/"$f" && mv -f @STAGED@/"$f" @LIVE@/"$f" || exit 1
done
rm -rf @STAGED@
if systemctl is-active --quiet @UNIT@; then
  systemctl reload @UNIT@ || { echo "Prometheus did not reload its new config" >&2; exit 1; }
fi
