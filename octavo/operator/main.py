"""kopf handlers for LLMService: thin wrappers around reconcile.reconcile().

Run with `octavo operator` or `kopf run -m octavo.operator.main`.

- create / update / resume of an LLMService reconcile it.
- Events of the objects it owns (Deployment, Service, PodDisruptionBudget, HPA, Job,
  NetworkPolicy) reconcile
  their owner: a finished Job rolls out at once, a ready Deployment turns the phase Ready, and an
  edited or deleted owned object is repaired. This replaces a periodic kopf timer, which would
  add a finalizer to every LLMService; with owner references and no finalizer, deleting an
  LLMService is plain garbage collection.
- Whichever handler ran it, a reconcile whose outcome asks to be called again (a validation
  retry after its backoff, a validation Job's deadline) is requeued in memory, as
  controller-runtime's RequeueAfter is: kopf's TemporaryError cannot be raised from an event
  handler (where a failed Job is usually seen), and a create handler sleeping on one is not
  woken sooner. After an operator restart the resume handlers reconcile every LLMService, and
  the schedule comes back from what status holds (nextRetryTime, the Job's creation time).
- A validating webhook (path /validate-llmservice) runs admission.check_llmservice() and the
  cluster's policy (allowed images, Secrets, claims) when OCTAVO_WEBHOOK_PORT is set; the
  reconcile runs the same checks either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from octavo.operator import admission, crd, reconcile, resources
from octavo.operator.kube import ApiError, Kube

log = logging.getLogger("octavo.operator")
WEBHOOK_ID = "validate-llmservice"  # the URL path: /validate-llmservice
# A reconcile that failed on an API error (not a verdict) is tried again after this long.
ERROR_REQUEUE_SECONDS = 10.0
OWNED = [
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("batch", "v1", "jobs"),
    ("networking.k8s.io", "v1", "networkpolicies"),
]


class Requeues:
    """Reconciles due later, one pending per LLMService: the earliest asked for wins (a reconcile
    reads the whole world, so an extra one is harmless and a missed one is not). Thread-safe:
    kopf runs the sync handlers in its executor; the timers live on the operator's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kube: Any):
        self.loop = loop
        self.kube = kube
        self._due: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._running: set[asyncio.Task] = set()  # held: the loop keeps only weak references

    def after(self, outcome: reconcile.Outcome | None, namespace: str, name: str) -> None:
        """Schedule what `outcome` asks for (from any thread)."""
        if outcome is not None and outcome.requeue_after is not None:
            self.later(namespace, name, float(outcome.requeue_after))

    def later(self, namespace: str, name: str, delay: float) -> None:
        self.loop.call_soon_threadsafe(self._schedule, namespace, name, delay)

    def due_in(self, namespace: str, name: str) -> float | None:
        """Seconds until the pending reconcile of this LLMService (None: nothing pending)."""
        handle = self._due.get((namespace, name))
        return None if handle is None else handle.when() - self.loop.time()

    def _schedule(self, namespace: str, name: str, delay: float) -> None:
        key = (namespace, name)
        when = self.loop.time() + max(0.0, delay)
        pending = self._due.get(key)
        if pending is not None and pending.when() <= when:
            return
        if pending is not None:
            pending.cancel()
        self._due[key] = self.loop.call_at(when, self._fire, key)

    def idle(self) -> bool:
        """Nothing due and nothing running."""
        return not self._due and not self._running

    def _fire(self, key: tuple[str, str]) -> None:
        self._due.pop(key, None)
        task = self.loop.create_task(self._run(*key))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, namespace: str, name: str) -> None:
        try:
            outcome = await self.loop.run_in_executor(None, reconcile.reconcile, self.kube,
                                                      namespace, name)
        except Exception as exc:  # noqa: BLE001 - an API hiccup: try again after a pause
            log.warning("requeued reconcile of %s/%s failed (%s); again in %ss", namespace,
                        name, exc, ERROR_REQUEUE_SECONDS)
            self._schedule(namespace, name, ERROR_REQUEUE_SECONDS)
            return
        if outcome is not None:
            log.info("%s/%s %s: %s", namespace, name, outcome.phase, outcome.message)
            if outcome.requeue_after is not None:
                self._schedule(namespace, name, float(outcome.requeue_after))

    def cancel_all(self) -> None:
        for handle in self._due.values():
            handle.cancel()
        self._due.clear()
        for task in self._running:
            task.cancel()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger,
                    **_: Any) -> None:
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
    memo.requeues = Requeues(asyncio.get_running_loop(), memo.kube)


@kopf.on.cleanup()
async def stop_requeues(memo: Any, **_: Any) -> None:
    requeues = getattr(memo, "requeues", None)
    if requeues is not None:
        requeues.cancel_all()


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


@kopf.on.resume(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.create(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.update(crd.GROUP, crd.VERSION, crd.PLURAL)
def reconcile_service(name: str, namespace: str, memo: Any, logger: logging.Logger,
                      **_: Any) -> None:
    outcome = reconcile.reconcile(memo.kube, namespace, name)
    if outcome is not None:
        logger.info("%s: %s", outcome.phase, outcome.message)
    memo.requeues.after(outcome, namespace, name)


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
    try:
        outcome = reconcile.reconcile(memo.kube, namespace, owner)
    except ApiError as exc:
        # kopf does not retry event handlers: without this the change would wait for the next
        # event.
        logger.warning("reconcile of %s after %s of %s failed (%s); again in %ss", owner, type,
                       body.get("kind"), exc, ERROR_REQUEUE_SECONDS)
        memo.requeues.later(namespace, owner, ERROR_REQUEUE_SECONDS)
        return
    if outcome is not None:
        logger.debug("%s after %s of %s: %s", outcome.phase, type, body.get("kind"), outcome.message)
    memo.requeues.after(outcome, namespace, owner)


for _group, _version, _plural in OWNED:
    kopf.on.event(group=_group, version=_version, plural=_plural,
                  labels={resources.LABEL_MANAGED_BY: resources.MANAGED_BY},
                  id=f"owned-{_plural}")(on_owned_event)


def validate_llmservice(spec: Any, name: str | None, body: Any, **_: Any) -> None:
    """The validating webhook: admission.check_llmservice() and the cluster's policy
    (admission.check_policy, from the operator's environment), rejected with every reason."""
    errors = admission.check_llmservice(dict(spec or {}),
                                        name or (body.get("metadata") or {}).get("name"))
    errors += admission.check_policy(dict(spec or {}), admission.Policy.from_env())
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


def webhook_enabled() -> bool:
    return bool(os.environ.get("OCTAVO_WEBHOOK_PORT"))


# kopf refuses to start with admission handlers and no webhook server, so the handler is
# registered only when a server is configured (the reconcile enforces the checks regardless).
if webhook_enabled():
    kopf.on.validate(crd.GROUP, crd.VERSION, crd.PLURAL, id=WEBHOOK_ID)(validate_llmservice)
