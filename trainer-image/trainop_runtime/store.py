"""The job's rendezvous store: ``python -m trainop_runtime.store --port P``.

It runs in its own pod, and every torchrun agent is a client of it
(``is_host=false``), so losing any worker pod, the first included, leaves the
rendezvous intact. Kubeflow's design hosts it in worker-0, whose loss ends the
job (kubeflow/trainer#1638). It holds only small keys; it runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta

# Re-exported by torch.distributed inside `if is_available():`, which mypy does not
# count as an explicit export.
from torch.distributed import TCPStore  # type: ignore[attr-defined]

from trainop_runtime import contract

logger = logging.getLogger("trainop_runtime.store")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="trainop-store", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get(contract.ENV_RDZV_PORT, contract.DEFAULT_RDZV_PORT)),
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104 - a pod listens on all its addresses
    ns = parser.parse_args(argv)

    # Block the signals before the server's threads exist, so only sigwait sees them.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)

    store = TCPStore(
        ns.host,
        ns.port,
        is_master=True,
        wait_for_workers=False,
        multi_tenant=True,
        timeout=timedelta(seconds=60),
    )
    # Tests and probes wait for this line; the port matters when --port 0 was asked.
    print(f"trainop store listening on {ns.host}:{store.port}", flush=True)  # noqa: T201
    received = signal.sigwait(stop)
    logger.info("%s received; store stopping", signal.Signals(received).name)
    del store
    return 0


if __name__ == "__main__":
    sys.exit(main())
