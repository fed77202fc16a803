## MonitoringProbe (operations/monitoring/facts.py): what the monitoring layer runs on this
## host, as the verify checks see it: the node-exporter unit and the metric names it serves,
## the dcgm-exporter container and its metric names, and, where Prometheus runs
## (@PROMETHEUS@ = yes), its unit, promtool's verdict on the live config, its targets (waiting
## up to @WAIT_S@ s for a first one, and up to @RESCRAPE_S@ s for a down one to be scraped
## again) and rules.
names() { curl -s --max-time 5 "$1" 2>/dev/null | sed -n 's/^\([a-zA-Z_:][a-zA-Z0-9_:]*\).*/\1/p' |
  sort -u | tr '\n' ' '; }
prom=@PROMETHEUS_URL@
# shellcheck disable=SC2043  # @NODE_UNITS@: several words once rendered
for unit in @NODE_UNITS@; do  # the name differs per platform: the one installed
  systemctl cat "$unit" >/dev/null 2>&1 && echo "node_unit=$(systemctl is-active "$unit")"
done
echo "node_metrics=$(names @NODE_URL@)"
# shellcheck disable=SC2050  # @DCGM@ is yes or no once rendered
if [ @DCGM@ = yes ]; then
  echo "dcgm_status=$(docker inspect --format '{{.State.Status}}' @DCGM_NAME@ 2>/dev/null)"
  echo "dcgm_metrics=$(names @DCGM_URL@)"
fi
# shellcheck disable=SC2050  # @PROMETHEUS@ is yes or no once rendered
if [ @PROMETHEUS@ = yes ]; then
  echo "prometheus_unit=$(systemctl is-active prometheus 2>/dev/null)"
  if out=$(promtool check config @CONFIG@ 2>&1); then echo "promtool=ok"
  else echo "promtool=$(echo "$out" | tr '\n' ' ')"; fi
  # a Prometheus just (re)started discovers its file_sd targets within seconds: wait for them
  i=0
  # shellcheck disable=SC2170  # @WAIT_S@ is a number once rendered
  while :; do
    targets=$(curl -s --max-time 10 "$prom/api/v1/targets?state=active")
    case $targets in *'"activeTargets":[{'*) break;; esac
    i=$((i + 1)); [ $i -ge @WAIT_S@ ] && break; sleep 1
  done
  # a target last scraped while its server restarted (a deploy just recreated it) is up at
  # its next scrape: a down one gets up to @RESCRAPE_S@ s, about one scrape interval
  i=0
  while :; do
    case $targets in *'"health":"down"'*) ;; *) break;; esac
    i=$((i + 1))
    # shellcheck disable=SC2170  # @RESCRAPE_S@ is a number once rendered
    [ $i -gt @RESCRAPE_S@ ] && break
    sleep 1
    targets=$(curl -s --max-time 5 "$prom/api/v1/targets?state=active")
  done
  echo "targets=$targets"
  echo "rules=$(curl -s --max-time 10 "$prom/api/v1/rules")"
fi
true
