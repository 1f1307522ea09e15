"""The `trainop` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def _operator(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `trainop run` and the exporter must not pay for
    # (or need) Kopf, and importing the handlers module registers its handlers.
    import kopf  # noqa: PLC0415

    from trainop.handlers import operator as _handlers  # noqa: F401, PLC0415

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Kopf logs every handler call at INFO: hundreds of lines per job start, and
        # measurable CPU on a busy operator. Our own Events and logs say what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    namespaces = args.namespace or []
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=not args.peering,
            peering_name=args.peering,
            liveness_endpoint=args.liveness,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    op = sub.add_parser("operator", help="run the operator against the current kubeconfig")
    op.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    op.add_argument(
        "--peering", default=None, help="Kopf peering name for several replicas with one active"
    )
    op.add_argument(
        "--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=_operator)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
