"""Inventory sources: where an inventory's hosts come from when they are not typed into an
inventory file by hand (Terraform's outputs; a cloud's tags in the same shape)."""
