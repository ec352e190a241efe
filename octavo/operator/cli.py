"""`octavo operator`: run the LLMService operator (kopf) in the foreground.

    octavo operator --namespace ml --namespace staging      # or OCTAVO_WATCH_NAMESPACES=ml,staging
    octavo operator --all-namespaces --standalone --liveness http://0.0.0.0:8080/healthz

The same handlers run under `kopf run -m octavo.operator.main`.
"""

from __future__ import annotations

import argparse
import os


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", action="append", default=None, metavar="NS",
                        help="namespace to watch (repeatable; globs allowed; default: "
                             "$OCTAVO_WATCH_NAMESPACES, comma-separated)")
    parser.add_argument("-A", "--all-namespaces", action="store_true",
                        help="watch every namespace (cluster-wide)")
    parser.add_argument("--standalone", action="store_true",
                        default=os.environ.get("OCTAVO_OPERATOR_STANDALONE", "") in ("1", "true"),
                        help="no peering with other operator replicas (run exactly one)")
    parser.add_argument("--liveness", metavar="URL",
                        default=os.environ.get("OCTAVO_OPERATOR_LIVENESS"),
                        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--webhook-port", type=int, default=None,
                        help="serve the validating webhook on this port (or "
                             "$OCTAVO_WEBHOOK_PORT; certificate from $OCTAVO_WEBHOOK_CERT/KEY)")
    parser.add_argument("--priority", type=int, default=0,
                        help="peering priority when several operators run")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def namespaces_from(args: argparse.Namespace) -> tuple[bool, list[str]]:
    """(cluster-wide?, namespaces) from the flags, then the environment."""
    if args.all_namespaces:
        return True, []
    namespaces = [ns for value in args.namespace or [] for ns in _split(value)]
    namespaces = namespaces or _split(os.environ.get("OCTAVO_WATCH_NAMESPACES"))
    if not namespaces or namespaces == ["*"]:
        return True, []
    return False, namespaces


def run(args: argparse.Namespace) -> int:
    if args.webhook_port:
        # Read by octavo.operator.main at import, which registers the webhook handler.
        os.environ["OCTAVO_WEBHOOK_PORT"] = str(args.webhook_port)

    import kopf

    import octavo.operator.main  # noqa: F401  (registers the handlers)

    clusterwide, namespaces = namespaces_from(args)
    kopf.configure(verbose=args.verbose)
    kopf.run(
        clusterwide=clusterwide,
        namespaces=namespaces,
        standalone=args.standalone,
        priority=args.priority,
        liveness_endpoint=args.liveness,
    )
    return 0
