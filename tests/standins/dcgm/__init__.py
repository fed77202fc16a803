"""STAND-IN dcgm-exporter for gpufleet's tests and lab, never for a real fleet.

server.py serves dcgm-exporter's /metrics from the STAND-IN GPU description
(tests/standins/gpu), for the fields of the counters CSV it is given (-f); image.py builds
the image `gpufleet-standin/dcgm-exporter:<upstream tag>-standin` that runs it, with no
registry (the same builder as the vLLM stand-in's image).
"""
