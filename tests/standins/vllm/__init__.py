"""A STAND-IN for vLLM's OpenAI-compatible server (server.py) and its image (image.py).

Test harness only: the lab has no GPU and no registry. Never deployed to a real fleet.
"""
