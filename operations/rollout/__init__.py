"""What a rollout does around each batch's deploy (operations.cli.rollout drives it): take the
batch's hosts out of the targets that Prometheus and load balancers read, wait until their
vLLM servers run no request, and put them back only once they answer ready again.

- ``serving``: the vLLM servers of each host (from the file_sd entries operations.cli.targets
  builds), their load (``vllm:num_requests_running``/``_waiting`` from ``/metrics``) and
  readiness (``/health``), read from the controller;
- ``membership``: which hosts are in the targets, written atomically to the controller's
  targets file and pushed to the monitoring hosts' ``targets/vllm.json`` (push.py).
"""
