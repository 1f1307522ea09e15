"""Kopf glue only: every handler enqueues a reconcile of the TrainingJob it concerns."""
