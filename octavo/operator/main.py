"""kopf handlers for LLMService: thin wrappers around reconcile.reconcile().

Run with `octavo operator` or `kopf run -m octavo.operator.main`.

- create / update / resume of an LLMService reconcile it. When a failed validation waits for
  its retry, the handler raises TemporaryError with the backoff so kopf calls it again (kopf
  keeps that schedule in annotations, so it survives an operator restart).
- Events of the objects it owns (Deployment, Service, PodDisruptionBudget, HPA, Job) reconcile
  their owner: a finished Job rolls out at once, a ready Deployment turns the phase Ready, and an
  edited or deleted owned object is repaired. This replaces a periodic kopf timer, which would
  add a finalizer to every LLMService; with owner references and no finalizer, deleting an
  LLMService is plain garbage collection.
- A validating webhook (path /validate-llmservice) runs admission.check_llmservice() when
  OCTAVO_WEBHOOK_PORT is set; the reconcile runs the same checks either way.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from octavo.operator import admission, crd, reconcile, resources
from octavo.operator.kube import Kube

WEBHOOK_ID = "validate-llmservice"  # the URL path: /validate-llmservice
OWNED = [
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("batch", "v1", "jobs"),
]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger, **_: Any) -> None:
    # Progress and the last-handled spec live in annotations under our group: the status
    # schema is ours alone (no preserve-unknown-fields for kopf's bookkeeping).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=crd.GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{crd.GROUP}/kopf-finalizer"
    # The operator serves one fixed CRD, installed before it starts (the Helm chart's crds/):
    # no watching of namespaces and CRDs, so it needs no cluster-wide read rights for them.
    # Namespaces are then taken as named (exact names, no globs).
    settings.scanning.disabled = True
    # kopf's own "handler succeeded" Events would drown ours; keep its warnings and errors.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = int(os.environ.get("OCTAVO_OPERATOR_WORKERS", "8"))
    settings.watching.server_timeout = int(os.environ.get("OCTAVO_OPERATOR_WATCH_TIMEOUT", "300"))
    _configure_webhook(settings, logger)
    if getattr(memo, "kube", None) is None:
        memo.kube = Kube()


def _configure_webhook(settings: kopf.OperatorSettings, logger: logging.Logger) -> None:
    """Serve the validating webhook when OCTAVO_WEBHOOK_PORT is set.

    The Helm chart mounts a serving certificate (OCTAVO_WEBHOOK_CERT/KEY) and owns the
    ValidatingWebhookConfiguration, so the operator needs no rights on it. Outside the chart,
    OCTAVO_WEBHOOK_HOST plus OCTAVO_WEBHOOK_MANAGED=1 lets kopf write that configuration itself
    (and, with no certificate given, make a self-signed one: `pip install certbuilder`).
    """
    port = os.environ.get("OCTAVO_WEBHOOK_PORT")
    if not port:
        return
    settings.admission.server = kopf.WebhookServer(
        addr="0.0.0.0", port=int(port), host=os.environ.get("OCTAVO_WEBHOOK_HOST") or None,
        certfile=os.environ.get("OCTAVO_WEBHOOK_CERT") or None,
        pkeyfile=os.environ.get("OCTAVO_WEBHOOK_KEY") or None,
        # Plain HTTP, for a TLS-terminating proxy in front (or a local test).
        insecure=os.environ.get("OCTAVO_WEBHOOK_INSECURE", "") in ("1", "true"))
    if os.environ.get("OCTAVO_WEBHOOK_MANAGED", "") in ("1", "true"):
        settings.admission.managed = f"{crd.PLURAL}.{crd.GROUP}"
    logger.info("validating webhook on port %s", port)


def _requeue(outcome: reconcile.Outcome | None) -> None:
    if outcome is not None and outcome.requeue_after is not None:
        raise kopf.TemporaryError(f"{outcome.phase}: {outcome.message}",
                                  delay=outcome.requeue_after)


@kopf.on.resume(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.create(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.update(crd.GROUP, crd.VERSION, crd.PLURAL)
def reconcile_service(name: str, namespace: str, memo: Any, logger: logging.Logger,
                      **_: Any) -> None:
    outcome = reconcile.reconcile(memo.kube, namespace, name)
    if outcome is not None:
        logger.info("%s: %s", outcome.phase, outcome.message)
    _requeue(outcome)


def owner_name(body: Any) -> str | None:
    """The LLMService that controls this object, if any."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == crd.KIND and str(ref.get("apiVersion", "")).startswith(f"{crd.GROUP}/"):
            return ref.get("name")
    return None


def on_owned_event(body: Any, type: str | None, namespace: str, memo: Any,
                   logger: logging.Logger, **_: Any) -> None:
    if type is None:  # the initial listing: the resume handlers cover start-up
        return
    owner = owner_name(body)
    if owner is None:
        return
    outcome = reconcile.reconcile(memo.kube, namespace, owner)
    if outcome is not None:
        logger.debug("%s after %s of %s: %s", outcome.phase, type, body.get("kind"), outcome.message)


for _group, _version, _plural in OWNED:
    kopf.on.event(group=_group, version=_version, plural=_plural,
                  labels={resources.LABEL_MANAGED_BY: resources.MANAGED_BY},
                  id=f"owned-{_plural}")(on_owned_event)


def validate_llmservice(spec: Any, name: str | None, body: Any, **_: Any) -> None:
    """The validating webhook: admission.check_llmservice(), rejected with every reason."""
    errors = admission.check_llmservice(dict(spec or {}),
                                        name or (body.get("metadata") or {}).get("name"))
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


def webhook_enabled() -> bool:
    return bool(os.environ.get("OCTAVO_WEBHOOK_PORT"))


# kopf refuses to start with admission handlers and no webhook server, so the handler is
# registered only when a server is configured (the reconcile enforces the checks regardless).
if webhook_enabled():
    kopf.on.validate(crd.GROUP, crd.VERSION, crd.PLURAL, id=WEBHOOK_ID)(validate_llmservice)
