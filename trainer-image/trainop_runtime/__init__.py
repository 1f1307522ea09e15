"""trainop's in-container runtime: elastic launch, checkpoints and progress.

It has no dependency on the operator: the operator imports its contract, never
the other way round.
"""
