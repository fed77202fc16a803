"""The lab fleet (inventory/lab.py): local systemd containers with no GPU and a small disk.

GPU checks report 'not applicable' on these hosts; every other layer runs for real.
"""

host_has_gpus = False
preflight_min_free_disk_gib = 2.0
