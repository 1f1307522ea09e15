"""The control-plane fixtures (cluster, crd, ns) come from tests/cluster; the
chart's cluster tests reuse that one local control plane."""

from tests.cluster.conftest import cluster, crd, ns  # noqa: F401  (pytest fixtures)
