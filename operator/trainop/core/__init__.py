"""The pure core: spec + observed state + now -> desired objects, decisions, status.

Purely computational: nothing here touches the network, the clock, the
environment or Kopf (enforced by the import contract in pyproject.toml).
"""
