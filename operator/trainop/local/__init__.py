"""The local runner: a TrainingJob on this machine, no cluster."""
