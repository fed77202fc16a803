"""Hosts of the inventory group `monitoring` run the fleet's Prometheus (the monitoring layer's
server): it scrapes every host of the inventory and evaluates the alert rules."""

monitoring_prometheus = True
