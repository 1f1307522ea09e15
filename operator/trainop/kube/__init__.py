"""The thin async Kubernetes adapter: the only module tree that talks to the API server."""
