"""End to end, the gateway (operations/gateway) on lab-3, for real: Debian's nginx in front of
the STAND-IN vLLM, first with plain HTTP, then with TLS from a certificate made here.

From the controller (outside the host): /v1 needs the key through the gateway, the routes
vLLM serves without it (/tokenize, /pause…) answer 404, the server's own port is on loopback
only, /metrics only for the Prometheus host (lab-1); a broken nginx config is refused by
nginx -t and the running one kept; verify's gateway checks pass, and fail once a hand edit
opens a route; turning the gateway off puts the server back on its port.
"""

from __future__ import annotations

import json
import shlex
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from operations.gateway import CONF, PREV, STAGED
from operations.kit import scripts
from tests.e2e.helpers import HOSTS, LAB_SECRETS, deploy, on_host, verify
from tests.e2e.test_lab_vllm import address, api

pytestmark = pytest.mark.lab
HOST = HOSTS[2]
PLAIN = ("--data", "gateway_mode=on", "--data", "gateway_plain_http=True")


def post(url: str, context=None) -> int:
    request = urllib.request.Request(url, data=b'{"prompt": "a b"}', method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def gateway(lab, tmp_path_factory):
    done = deploy("-y", "--limit", HOST, *PLAIN)
    assert done.returncode == 0, done.output[-3000:]
    yield tmp_path_factory.mktemp("tls")
    done = deploy("-y", "--limit", HOST)  # gateway off again: the lab's plain config
    assert done.returncode == 0, done.output[-3000:]
    assert api(HOST, "/standin/args", LAB_SECRETS["VLLM_API_KEY"])[0] == 200  # direct again
    assert on_host(HOST, f"test -e {CONF}").returncode != 0


def test_only_the_allowlisted_routes_pass_and_the_server_is_on_loopback(gateway):
    key = LAB_SECRETS["VLLM_API_KEY"]
    assert api(HOST, "/v1/models")[0] == 401 and api(HOST, "/v1/models", key)[0] == 200
    assert api(HOST, "/health")[0] == 200
    base = f"http://{address(HOST)}:8000"
    for path in ("/tokenize", "/detokenize", "/pause", "/collective_rpc"):
        assert post(base + path) == 404, path
    assert api(HOST, "/standin/args", key)[0] == 404
    assert api(HOST, "/health", port=18000)[0] == 0  # the server's own port: loopback only
    assert on_host(HOST, "curl -s -o /dev/null -w '%{http_code}' "
                   "http://127.0.0.1:18000/health").stdout == "200"  # fmt: skip
    # /metrics: the Prometheus host (lab-1) yes, the controller no
    assert api(HOST, "/metrics")[0] == 403
    got = on_host(HOSTS[0], f"curl -s -o /dev/null -w '%{{http_code}}' {base}/metrics").stdout
    assert got == "200"


def test_verify_passes_then_fails_when_a_hand_edit_opens_a_route(gateway):
    done = verify("--limit", HOST, "-m", "vllm", *PLAIN)
    assert done.returncode == 0, done.output[-3000:]
    assert (
        on_host(
            HOST,
            f"sed -i 's|location / {{ return 404; }}|location / {{ proxy_pass "
            f"http://127.0.0.1:18000; }}|' {CONF} && systemctl reload nginx",
        ).returncode
        == 0
    )
    try:
        done = verify("--limit", HOST, "-m", "vllm", *PLAIN)
        assert done.returncode != 0
        assert "routes not refused" in done.output and "/tokenize on port 8000: 405" in done.output
    finally:
        assert deploy("-y", "--limit", HOST, *PLAIN).returncode == 0  # the deploy puts it back
    assert post(f"http://{address(HOST)}:8000/pause") == 404


def test_a_config_nginx_refuses_is_rolled_back(gateway):
    before = on_host(HOST, f"sha1sum {CONF}").stdout
    bad = f"echo 'server {{ listen 8000; bogus_directive on; }}' > {CONF}.staged"
    apply = scripts.render("nginx_apply", MODE="apply", STAGED=STAGED, LIVE=CONF, PREV=PREV)
    done = on_host(HOST, f"{bad} && sh -c {shlex.quote(apply)}")
    assert done.returncode != 0 and "nginx -t refused it" in done.output, done.output
    assert on_host(HOST, f"sha1sum {CONF}").stdout == before
    assert api(HOST, "/health")[0] == 200


def test_tls_presents_the_configured_certificate(gateway):
    cert, key = gateway / "tls.crt", gateway / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=lab-3", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    key.chmod(0o600)
    tls = ("--data", "gateway_mode=on", "--data", f"gateway_tls_cert_file={cert}",
           "--data", f"gateway_tls_key_file={key}")  # fmt: skip
    done = deploy("-y", "--limit", HOST, *tls)
    assert done.returncode == 0, done.output[-3000:]
    assert "PRIVATE KEY" not in done.output
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    assert post(f"https://{address(HOST)}:8000/tokenize", context) == 404
    assert on_host(HOST, "stat -c %a:%U /etc/gpufleet/gateway/tls.key").stdout.strip() == "600:root"
    done = verify("--limit", HOST, "-m", "vllm", *tls)
    assert done.returncode == 0, done.output[-3000:]


def stream_arrivals(url: str, key: str) -> list[float]:
    """Seconds from the request to each server-sent event of a streamed completion."""
    body = json.dumps({"prompt": "a", "max_tokens": 4, "stream": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {key}")
    started, arrivals = time.monotonic(), []
    with urllib.request.urlopen(request, timeout=30) as response:
        for line in response:  # read as the lines come, not at the end
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic() - started)
    return arrivals


def test_streamed_tokens_pass_the_gateway_as_they_are_made(gateway):
    """With 0.5 s between the STAND-IN's tokens, each event reaches the controller through
    nginx about 0.5 s after the one before. A hand edit to proxy_buffering on fails verify.
    (nginx 1.22 measured here still passed these few small events at once with buffering
    on: it holds data back only while its buffers fill, so the check is on the config that
    guarantees the stream, not on a timing this stream cannot show.)"""
    done = deploy("-y", "--limit", HOST, *PLAIN)  # plain HTTP again after the TLS test
    assert done.returncode == 0, done.output[-3000:]
    key, url = LAB_SECRETS["VLLM_API_KEY"], f"http://{address(HOST)}:8000"
    delay = "/tmp/gpufleet-standin-token-delay"
    assert on_host(HOST, f"docker exec vllm-main sh -c 'echo 0.5 > {delay}'").returncode == 0
    try:
        arrivals = stream_arrivals(url, key)
        assert len(arrivals) == 5, arrivals  # 4 tokens and [DONE]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:-1], strict=False)]
        assert arrivals[0] < 1.0 and all(gap > 0.35 for gap in gaps), arrivals
        buffered = f"sed -i 's|proxy_buffering off;|proxy_buffering on;|' {CONF}"
        assert on_host(HOST, f"{buffered} && systemctl reload nginx").returncode == 0
        done = verify("--limit", HOST, "-m", "vllm", *PLAIN)
        assert done.returncode != 0 and "proxy_buffering on in 1 place" in done.output, done.output[
            -2000:
        ]
    finally:
        on_host(HOST, f"docker exec vllm-main rm -f {delay}")
        assert deploy("-y", "--limit", HOST, *PLAIN).returncode == 0  # the deploy puts it back
