"""The metrics sidecar passes the "restricted" Pod Security Standard on its own.

A namespace labelled pod-security.kubernetes.io/enforce=restricted refuses a
worker pod whose sidecar keeps Linux capabilities or runs unconfined; the
trainer container is the user's to harden, the sidecar is ours.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import JOB, spec
from trainop.api import constants as c
from trainop.core.build import build_worker_pod
from trainop.core.config import OperatorConfig

CFG = OperatorConfig(exporter_image="trainop:test")


def sidecar_security(**overrides: Any) -> dict[str, Any]:
    pod = build_worker_pod(JOB, spec(**overrides), 0, 0, CFG)
    (sidecar,) = (i for i in pod["spec"]["initContainers"] if i["name"] == c.EXPORTER_CONTAINER)
    security: dict[str, Any] = sidecar["securityContext"]
    return security


# The restricted profile's container-level checks (kubernetes.io/docs/concepts/security/
# pod-security-standards), as (id, what the API field must satisfy).
RESTRICTED = [
    pytest.param(lambda s: s["allowPrivilegeEscalation"] is False, id="no privilege escalation"),
    pytest.param(lambda s: s["runAsNonRoot"] is True, id="non-root"),
    pytest.param(lambda s: s["capabilities"]["drop"] == ["ALL"], id="all capabilities dropped"),
    pytest.param(lambda s: "add" not in s["capabilities"], id="no capability added"),
    pytest.param(
        lambda s: s["seccompProfile"] == {"type": "RuntimeDefault"}, id="RuntimeDefault seccomp"
    ),
    pytest.param(lambda s: s["readOnlyRootFilesystem"] is True, id="read-only root"),
]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"metrics": {"image": "mine:2", "port": 9500}}, id="own image and port"),
    ],
)
@pytest.mark.parametrize("holds", RESTRICTED)
def test_sidecar_meets_the_restricted_pod_security_standard(
    overrides: dict[str, Any], holds: Any
) -> None:
    assert holds(sidecar_security(**overrides))
