## GatewayProbe (operations/gateway/facts.py): the gateway as a client from outside the host
## sees it, asked at the host's own non-loopback address (@ADDRESS@, or its first one): nginx's
## state, the status of each probed path on each port (@PORTS@, @PATHS@) and, with TLS, the
## certificate's SHA-256 fingerprint; how many proxy_buffering lines of its config (@CONF@) say
## off and on (streamed tokens must not be held back). GET only: vLLM serves these routes by POST, so a GET that
## reaches vLLM answers 405 (or 200) and changes nothing there, while the gateway answers 404.
addr=@ADDRESS@
[ -n "$addr" ] || addr=$(hostname -I 2>/dev/null | cut -d' ' -f1)
case $addr in *:*) addr="[$addr]";; esac
scheme=@SCHEME@
echo "nginx=$(systemctl is-active nginx 2>/dev/null)"
echo "address=$addr"
off=$(grep -cE '^[[:space:]]*proxy_buffering[[:space:]]+off;' @CONF@ 2>/dev/null)
on=$(grep -cE '^[[:space:]]*proxy_buffering[[:space:]]+on;' @CONF@ 2>/dev/null)
echo "buffering=${off:-0} ${on:-0}"
# shellcheck disable=SC2043  # @PORTS@ and @PATHS@: several words once rendered
for port in @PORTS@; do
  for path in @PATHS@; do
    code=$(curl -sk --path-as-is -o /dev/null -w '%{http_code}' --max-time 5 \
      "$scheme://$addr:$port$path" 2>/dev/null)
    echo "route=$port $path ${code:-000}"
  done
  if [ "$scheme" = https ]; then
    print=$(openssl s_client -connect "$addr:$port" </dev/null 2>/dev/null |
      openssl x509 -noout -fingerprint -sha256 2>/dev/null | sed 's/.*=//')
    echo "tls=$port ${print:-none}"
  fi
done
true
