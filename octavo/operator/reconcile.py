"""One level-triggered reconcile of an LLMService: read the world, converge it, report.

Every kopf handler (create, update, resume, and events of the objects it owns) ends up here.
It can run any number of times, concurrently with itself or after a crash, and converge:

1. Admission checks and the cluster's policy (admission.py). A spec that cannot or may not be
   deployed is reported, not deployed (an existing Deployment keeps the previous spec).
2. With an hf:// source and a modelCache: the cache claim and a download Job (model_delivery.py),
   one per delivery hash. Until it succeeds the Deployment is not touched; a failure is
   ModelReady=False / DownloadFailed (deleting the Job retries).
3. With a draft model: the validation Job for this (target, draft) pair, named from the pair's
   hash so a repeated reconcile finds it. Until it says compatible, the Deployment is not
   touched: an existing one keeps serving the previous spec.
   The Job's own events (main.py watches owned Jobs) bring the next reconcile; the outcome also
   asks to be called again at the Job's deadline (a Job that never finishes counts as failed
   then) and, after a failure, when the backoff ends (a new Job under the same name).
4. The API key: the Secret the spec names, else one the operator creates once (never
   overwritten; create is the only right it has on Secrets).
5. Server-side apply of the Deployment, Service, PodDisruptionBudget (and HPA), each only when
   the live object has drifted from the desired one; then the objects of optional APIs (a KEDA
   ScaledObject, an InferencePool and its endpoint picker), whose missing CRD is a Warning Event
   and a retry, never a reason not to serve; owned objects the spec no longer asks for go. An
   object the API server refuses (400/422: a malformed spec.podTemplate) is SpecValid=False.
6. Status from the Deployment's: phase, conditions, ready replicas, endpoint.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from octavo.operator import (admission, crd, inference_pool, model_delivery, resources, scaling,
                             status as st)
from octavo.operator.kube import ApiError, Kube
from octavo.operator.spec import LLMServiceSpec
from octavo.operator.validation import PairVerdict

log = logging.getLogger("octavo.operator")

# A failed validation (a model could not be read, a crash, the deadline) is retried after 30s,
# 60s, ... up to 10 min; the operator's environment (the chart's `validation` values) can change
# both.
RETRY_BASE_ENV = "OCTAVO_VALIDATION_RETRY_BASE_SECONDS"
RETRY_MAX_ENV = "OCTAVO_VALIDATION_RETRY_MAX_SECONDS"
DEFAULT_RETRY_BASE_SECONDS = 30.0
DEFAULT_RETRY_MAX_SECONDS = 600.0
# The Job controller fails a validation Job at its activeDeadlineSeconds; past that and this
# margin the operator counts a Job still running as failed itself (a stuck or suspended Job, a
# Job controller that is down).
DEADLINE_GRACE_SECONDS = 30.0

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


@dataclass
class Outcome:
    """The result of one reconcile. `requeue_after` (seconds) asks to be called again."""

    phase: str
    message: str = ""
    requeue_after: float | None = None


@dataclass
class _PairState:
    settled: bool  # a verdict on compatibility exists (compatible or not)
    compatible: bool
    record: dict[str, Any]
    condition: dict[str, Any]
    phase: str | None = None  # the phase while not deployable
    requeue_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _seconds_from_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return max(0.1, float(value)) if value else default
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", name, value, default)
        return default


def retry_delay(failures: int) -> float:
    """Seconds between the `failures`-th failed validation and the next attempt."""
    base = _seconds_from_env(RETRY_BASE_ENV, DEFAULT_RETRY_BASE_SECONDS)
    cap = max(base, _seconds_from_env(RETRY_MAX_ENV, DEFAULT_RETRY_MAX_SECONDS))
    return min(cap, base * 2 ** max(0, failures - 1))


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(kube: Kube, namespace: str, name: str,
              now: datetime.datetime | None = None) -> Outcome | None:
    """Reconcile the LLMService `namespace/name`; None when it is gone or being deleted."""
    with _locks_guard:
        lock = _locks[(namespace, name)]
    with lock:  # one reconcile per object at a time in this process
        body = kube.get(crd.API_VERSION, crd.KIND, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        return _reconcile(kube, body, now or datetime.datetime.now(datetime.timezone.utc))


def _reconcile(kube: Kube, body: dict[str, Any], now: datetime.datetime) -> Outcome:
    meta = body["metadata"]
    generation = meta.get("generation")
    old_status = body.get("status") or {}
    stamp = _stamp(now)
    conditions: list[dict[str, Any]] = []
    drop: tuple[str, ...] = ()
    events: list[tuple[str, str, str]] = []
    new_status: dict[str, Any] = {}
    if generation is not None:
        new_status["observedGeneration"] = generation

    errors = admission.check_llmservice(body.get("spec"), meta.get("name"))
    forbidden = admission.check_policy(body.get("spec"), admission.Policy.from_env())
    if errors or forbidden:
        message = "; ".join(errors + forbidden)
        reason = "InvalidSpec" if errors else "Forbidden"
        conditions.append(st.condition(st.SPEC_VALID, False, reason, message, generation))
        events.append(("Warning", reason, message))
        _observe_existing(kube, body, None, new_status, conditions, generation,
                          blocked=f"invalid spec: {message}")
        return _finish(kube, body, old_status, new_status, conditions, drop, events, stamp,
                       Outcome(st.BLOCKED, message))
    conditions.append(st.condition(st.SPEC_VALID, True, "Valid", "the spec passed admission "
                                   "checks", generation))
    spec = LLMServiceSpec.from_dict(body.get("spec"))
    # Before any pod exists (the validation Job's included), so none runs unconfined.
    _ensure_network_policy(kube, body, network_policy_settings())

    if spec.cache_delivery:
        download = _deliver(kube, body, spec, events)
        new_status["download"] = download.record(spec, meta["name"])
        conditions.append(_model_ready_condition(download, generation))
        if download.phase != model_delivery.SUCCEEDED:
            failed = download.phase == model_delivery.FAILED
            _observe_existing(kube, body, spec, new_status, conditions, generation,
                              blocked=f"model download failed: {download.message}" if failed
                              else None)
            if not failed:
                conditions[-1] = st.condition(st.PROGRESSING, True, "Downloading",
                                              "waiting for the model download before rolling "
                                              "out", generation)
            # Drop the pair verdict's condition only if the draft is gone; keep it otherwise.
            return _finish(kube, body, old_status, new_status, conditions, drop, events, stamp,
                           Outcome(st.BLOCKED if failed else st.DEPLOYING, download.message))
    else:
        new_status["download"] = None
        drop += (st.MODEL_READY,)
        if spec.cache_claim_owned:
            _ensure_claim(kube, body, spec)

    if spec.draft is not None:
        pair = _validate_pair(kube, body, spec, old_status.get("pair"), now, generation)
        new_status["pair"] = pair.record
        conditions.append(pair.condition)
        events += pair.events
        if not pair.compatible:
            message = pair.condition["message"]
            _observe_existing(kube, body, spec, new_status, conditions, generation,
                              blocked=None if pair.phase == st.VALIDATING else message,
                              validating=pair.phase == st.VALIDATING)
            return _finish(kube, body, old_status, new_status, conditions, drop, events, stamp,
                           Outcome(pair.phase or st.BLOCKED, message, pair.requeue_after))
    else:
        new_status["pair"] = None  # merge patch: remove a verdict about a draft now gone
        drop += (st.PAIR_COMPATIBLE,)

    new_status["apiKey"] = _ensure_api_key(kube, body, spec, events)
    deployment = None
    served_before = _version(kube.get("apps/v1", "Deployment", meta.get("namespace", "default"),
                                      meta["name"]))
    for desired in resources.serving_objects(body, spec):
        try:
            live = ensure(kube, desired)
        except ApiError as exc:
            if exc.status not in (400, 422):
                raise
            # The API server refused what the spec made (a malformed spec.podTemplate field the
            # admission checks do not read): the spec's fault, said as such, and nothing retried
            # until it changes.
            message = (f"the API server refused the {desired['kind']} this spec makes: {exc} "
                       "(check spec.podTemplate)")
            conditions[0] = st.condition(st.SPEC_VALID, False, "Rejected", message, generation)
            events.append(("Warning", "Rejected", message))
            _observe_existing(kube, body, spec, new_status, conditions, generation,
                              blocked=message)
            return _finish(kube, body, old_status, new_status, conditions, drop, events, stamp,
                           Outcome(st.BLOCKED, message))
        if desired["kind"] == "Deployment":
            deployment = live
    missing = _ensure_optional(kube, body, spec, events)
    _delete_unwanted(kube, body, spec)
    _delete_stale_jobs(kube, body, spec.pair_hash())

    rollout = st.rollout_of(deployment)
    if rollout.phase == st.READY and _version(deployment) == served_before:
        # The current spec serves (the Deployment was not just rewritten, when its status
        # still describes the old pods): caches and download Jobs of earlier sources can go.
        _delete_stale_delivery(kube, body, spec)
    _report_serving(body, spec, deployment, rollout, new_status, conditions, generation)
    if rollout.phase == st.READY and old_status.get("phase") != st.READY:
        events.append(("Normal", "Ready", f"{rollout.ready} replica(s) serving "
                       f"{new_status['endpoint']}"))
    return _finish(kube, body, old_status, new_status, conditions, drop, events, stamp,
                   Outcome(rollout.phase, rollout.message,
                           MISSING_API_REQUEUE_SECONDS if missing else None))


def _version(obj: dict[str, Any] | None) -> Any:
    """What identifies a Deployment's version: its spec (a rewrite changes it)."""
    return (obj or {}).get("spec")


# --- the model cache ------------------------------------------------------------------------


def _ensure_claim(kube: Kube, body: dict[str, Any], spec: LLMServiceSpec) -> None:
    """Create the operator-made cache claim once (a claim's spec is mostly immutable: an
    existing one is kept as it is)."""
    claim = model_delivery.cache_claim(body, spec)
    if claim is None:
        return
    try:
        kube.create(claim)
    except ApiError as exc:
        if exc.status != 409:
            raise


def _deliver(kube: Kube, body: dict[str, Any], spec: LLMServiceSpec,
             events: list[tuple[str, str, str]]) -> model_delivery.Download:
    """The cache claim and its download Job (created once per delivery hash); what the Job says.
    A deleted Job is made again, so deleting a failed one retries the download."""
    namespace = body["metadata"].get("namespace", "default")
    _ensure_claim(kube, body, spec)
    wanted = model_delivery.download_job(body, spec)
    job = kube.get("batch/v1", "Job", namespace, wanted["metadata"]["name"])
    if job is None:
        try:
            kube.create(wanted)
        except ApiError as exc:
            if exc.status in (400, 422):
                # Refused for what the spec made (spec.podTemplate's placement fields reach this
                # Job): a failed delivery until the spec changes, not a retry loop.
                download = model_delivery.Download(
                    model_delivery.FAILED, f"the API server refused the download Job "
                    f"{wanted['metadata']['name']}: {exc} (check spec.podTemplate)")
                events.append(("Warning", "DownloadFailed", download.message))
                return download
            if exc.status != 409:
                raise
        events.append(("Normal", "Downloading", f"download Job {wanted['metadata']['name']} "
                       f"fetches {', '.join(r.display for r in spec.downloads())} into claim "
                       f"{spec.cache_claim(body['metadata']['name'])}"))
        return model_delivery.download_state(None, [])
    download = model_delivery.download_state(job, _fetch_results(kube, job))
    if download.phase == model_delivery.FAILED:
        events.append(("Warning", "DownloadFailed", download.message))
    elif download.phase == model_delivery.SUCCEEDED:
        events.append(("Normal", "ModelCached", download.message))
    return download


def _fetch_results(kube: Kube, job: dict[str, Any]) -> list[dict[str, Any]]:
    """fetch-model's results from the Job's pods' termination messages, oldest pod first."""
    namespace = job["metadata"].get("namespace", "default")
    pods = kube.list("v1", "Pod", namespace, {"job-name": job["metadata"]["name"]})
    results: list[dict[str, Any]] = []
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or ""):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != model_delivery.FETCH_CONTAINER:
                continue
            terminated = (cs.get("state") or {}).get("terminated") or \
                (cs.get("lastState") or {}).get("terminated") or {}
            result = model_delivery.parse_result(terminated.get("message"))
            if result is not None:
                results.append(result)
    return results


def _model_ready_condition(download: model_delivery.Download,
                           generation: int | None) -> dict[str, Any]:
    if download.phase == model_delivery.SUCCEEDED:
        return st.condition(st.MODEL_READY, True, "Cached", download.message, generation)
    if download.phase == model_delivery.FAILED:
        return st.condition(st.MODEL_READY, False, "DownloadFailed", download.message, generation)
    return st.condition(st.MODEL_READY, False, download.phase, download.message, generation)


def _delete_stale_delivery(kube: Kube, body: dict[str, Any], spec: LLMServiceSpec) -> None:
    """Download Jobs and operator-made cache claims of sources the served spec no longer
    names. Called only once the current spec serves, so no running pod still mounts them."""
    namespace = body["metadata"].get("namespace", "default")
    current = (spec.delivery_hash() or "none")[:63]
    claim = spec.cache_claim(body["metadata"]["name"])
    for api_version, kind, component in (
            ("batch/v1", "Job", model_delivery.COMPONENT_DOWNLOAD),
            ("v1", "PersistentVolumeClaim", model_delivery.COMPONENT_CACHE)):
        for item in kube.list(api_version, kind, namespace,
                              {resources.LABEL_SERVICE: body["metadata"]["name"],
                               resources.LABEL_COMPONENT: component}):
            labels = item["metadata"].get("labels") or {}
            stale = labels.get(model_delivery.LABEL_DELIVERY_HASH) != current and \
                item["metadata"]["name"] != claim
            if stale and _owned_by(item, body):
                kube.delete(api_version, kind, namespace, item["metadata"]["name"])


# --- the validation Job --------------------------------------------------------------------


def _validate_pair(kube: Kube, body: dict[str, Any], spec: LLMServiceSpec,
                   old: dict[str, Any] | None, now: datetime.datetime,
                   generation: int | None) -> _PairState:
    namespace = body["metadata"].get("namespace", "default")
    pair_hash = spec.pair_hash()
    assert pair_hash is not None and spec.draft is not None
    job_name = resources.validation_job_name(body["metadata"]["name"], pair_hash)
    record: dict[str, Any] = {"hash": pair_hash, "job": job_name,
                              "target": spec.model.display, "draft": spec.draft.display}
    old = old if old and old.get("hash") == pair_hash else None

    # A verdict on this exact pair is final: the Job is not run again (it may be gone by now).
    if old and old.get("verdict") in ("compatible", "compatible-with-padding", "incompatible"):
        return _settled(PairVerdict.from_json({**old, "target": old.get("targetVocab"),
                                               "draft": old.get("draftVocab")}),
                        {**old, **record}, generation, announce=False)

    failures = int((old or {}).get("failures", 0))
    job = kube.get("batch/v1", "Job", namespace, job_name)
    if job is not None and job["metadata"].get("uid") and \
            job["metadata"].get("uid") == (old or {}).get("failedJobUid"):
        job = None  # the failed attempt already counted; it is being deleted
    if job is None:
        if failures:
            retry_at = (st.parse_time((old or {}).get("nextRetryTime"))
                        or now + datetime.timedelta(seconds=retry_delay(failures)))
            if retry_at > now:
                return _failed(record, old or {}, generation, retry_at, now, announce=False)
        try:
            kube.create(resources.validation_job(body, spec))
        except ApiError as exc:
            if exc.status != 409:  # 409: created meanwhile, which is what we want
                raise
        return _pending(record, old, failures, spec, job_name, generation, started=now, now=now,
                        created=True)

    state = _job_state(job)
    if state == "running":
        started = (st.parse_time(job["metadata"].get("creationTimestamp"))
                   or st.parse_time((old or {}).get("startedAt")) or now)
        if now < started + _deadline(spec):
            return _pending(record, old, failures, spec, job_name, generation, started=started,
                            now=now, created=False)
        message = (f"the validation Job ran past spec.speculative.validationTimeoutSeconds "
                   f"({spec.validation_timeout_seconds}s) without a verdict")
    else:
        verdict = _read_verdict(kube, job)
        if verdict is not None and verdict.verdict != "error":
            return _settled(verdict, {**record, "checkedAt": _stamp(now)}, generation,
                            announce=True)
        # The check itself failed: a model could not be read, or the Job died without a verdict.
        if verdict is not None:
            message = verdict.message
        elif state == "succeeded":
            message = "the validation Job finished without a verdict in its termination message"
        else:
            message = _job_failure_message(job)
    failures += 1
    retry_at = now + datetime.timedelta(seconds=retry_delay(failures))
    failed = {**record, "verdict": "error", "compatible": False, "reason": "ValidationFailed",
              "message": message, "failures": failures, "lastFailureTime": _stamp(now),
              "nextRetryTime": _stamp(retry_at), "failedJobUid": job["metadata"].get("uid", "")}
    # Make room for the retry under the same deterministic name (its pods go with it).
    kube.delete("batch/v1", "Job", namespace, job_name)
    return _failed(record, failed, generation, retry_at, now, announce=True)


def _deadline(spec: LLMServiceSpec) -> datetime.timedelta:
    """How long after its creation a validation Job still running counts as failed."""
    return datetime.timedelta(seconds=spec.validation_timeout_seconds + DEADLINE_GRACE_SECONDS)


def _pending(record: dict[str, Any], old: dict[str, Any] | None, failures: int,
             spec: LLMServiceSpec, job_name: str, generation: int | None,
             started: datetime.datetime, now: datetime.datetime, created: bool) -> _PairState:
    assert spec.draft is not None
    attempt = f" (attempt {failures + 1})" if failures else ""
    message = (f"validation Job {job_name}{attempt} is checking that {spec.draft.display} shares "
               f"{spec.model.display}'s vocabulary")
    events = [("Normal", "Validating", message)] if created else []
    rec = {**record, "attempt": failures + 1, "startedAt": _stamp(started)}
    if failures:
        rec["failures"] = failures
        rec["lastFailureTime"] = (old or {}).get("lastFailureTime")
    # Called again at the deadline: a Job that never finishes must not keep it Validating.
    wake = max(1.0, (started + _deadline(spec) - now).total_seconds())
    return _PairState(False, False, {k: v for k, v in rec.items() if v is not None},
                      st.condition(st.PAIR_COMPATIBLE, None, "Validating", message, generation),
                      phase=st.VALIDATING, requeue_after=wake, events=events)


def _failed(record: dict[str, Any], failed: dict[str, Any], generation: int | None,
            retry_at: datetime.datetime, now: datetime.datetime, announce: bool) -> _PairState:
    failures = int(failed.get("failures", 1))
    wait = (retry_at - now).total_seconds()
    # The condition names the retry's time, not a countdown: it stays the same until it happens.
    message = (f"validation attempt {failures} failed: {failed.get('message', '')}; attempt "
               f"{failures + 1} at {_stamp(retry_at)}")
    rec = {**record, **{k: failed[k] for k in ("verdict", "compatible", "reason", "message",
                                               "failures", "lastFailureTime", "failedJobUid")
                        if k in failed},
           "attempt": failures + 1, "nextRetryTime": _stamp(retry_at)}
    events = [("Warning", "ValidationFailed",
               f"validation attempt {failures} failed: {failed.get('message', '')}; retrying in "
               f"{max(0, round(wait))}s")] if announce else []
    return _PairState(False, False, rec,
                      st.condition(st.PAIR_COMPATIBLE, None, "ValidationFailed", message,
                                   generation),
                      phase=st.BLOCKED, requeue_after=max(0.5, wait), events=events)


def _settled(verdict: PairVerdict, record: dict[str, Any], generation: int | None,
             announce: bool) -> _PairState:
    rec = {**record, "verdict": verdict.verdict, "compatible": verdict.compatible,
           "message": verdict.message, "differences": list(verdict.differences[:10]),
           "targetVocab": _side(verdict.target), "draftVocab": _side(verdict.draft)}
    for stale in ("failures", "lastFailureTime", "failedJobUid", "attempt", "nextRetryTime",
                  "startedAt"):
        rec.pop(stale, None)
    if verdict.compatible:
        rec["reason"] = "CompatibleWithPadding" if verdict.verdict == "compatible-with-padding" \
            else "Compatible"
        cond = st.condition(st.PAIR_COMPATIBLE, True, rec["reason"], verdict.message, generation)
        events = [("Normal", "PairCompatible", f"{record['draft']} can draft for "
                   f"{record['target']}: {verdict.message}")] if announce else []
        return _PairState(True, True, rec, cond, events=events)
    rec["reason"] = "VocabularyMismatch"
    message = f"{record['draft']} cannot draft for {record['target']}: {verdict.message}"
    cond = st.condition(st.PAIR_COMPATIBLE, False, "VocabularyMismatch", message, generation)
    events = [("Warning", "VocabularyMismatch", message)] if announce else []
    return _PairState(True, False, rec, cond, phase=st.BLOCKED, events=events)


def _side(side: dict[str, Any] | None) -> dict[str, Any]:
    side = side or {}
    return {k: side.get(k) for k in ("path", "vocab_size", "tokenizer_size")}


def _job_state(job: dict[str, Any]) -> str:
    job_status = job.get("status") or {}
    for cond in job_status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") == "Complete":
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") == "Failed":
            return "failed"
    return "running"


def _job_failure_message(job: dict[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return (f"the validation Job failed ({cond.get('reason', 'Failed')}: "
                    f"{cond.get('message', '')})").replace(": )", ")")
    return "the validation Job failed"


def _read_verdict(kube: Kube, job: dict[str, Any]) -> PairVerdict | None:
    """The check-pair verdict from the Job's pods' termination messages; a compatibility verdict
    wins over an error one (a retried pod may have succeeded after a failed one)."""
    namespace = job["metadata"].get("namespace", "default")
    job_uid = job["metadata"].get("uid")
    pods = kube.list("v1", "Pod", namespace, {"job-name": job["metadata"]["name"]})
    found: list[PairVerdict] = []
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or ""):
        pod_labels = (pod.get("metadata") or {}).get("labels") or {}
        owner_uid = (pod_labels.get("batch.kubernetes.io/controller-uid")
                     or pod_labels.get("controller-uid"))
        if job_uid and owner_uid and owner_uid != job_uid:
            continue  # a pod of an earlier Job with the same name
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != resources.CHECK_CONTAINER:
                continue
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                terminated = state.get("terminated") or {}
                verdict = _parse_termination_message(terminated.get("message"))
                if verdict is not None:
                    found.append(verdict)
    settled = [v for v in found if v.verdict != "error"]
    return (settled or found or [None])[-1]


def _parse_termination_message(message: str | None) -> PairVerdict | None:
    if not message:
        return None
    try:
        return PairVerdict.from_json(json.loads(message))
    except ValueError:
        # Not JSON: the command died before writing a verdict, and Kubernetes fell back to
        # the log's tail (FallbackToLogsOnError).
        tail = message.strip().splitlines()[-3:]
        return PairVerdict.error(f"check-pair crashed: {' | '.join(tail)}"[:512], "", "")


# --- owned objects -------------------------------------------------------------------------


def is_subset(desired: Any, live: Any) -> bool:
    """Whether `live` already holds every field of `desired` (extra, defaulted fields in
    `live` are fine). Lists must match item for item. A false or empty desired value matches an
    absent one: the API server omits those when it serializes."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            is_subset(v, live[k]) if k in live else v in (False, 0, "", None) or v == {} or v == []
            for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and \
            all(is_subset(d, x) for d, x in zip(desired, live, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live or desired == live
    if isinstance(desired, (int, float, str)) and isinstance(live, (int, float, str)):
        return str(desired) == str(live)  # quantities come back as strings
    return desired == live


def ensure(kube: Kube, desired: dict[str, Any]) -> dict[str, Any]:
    """Apply `desired` if the live object is missing or drifted; the live object either way.
    Not writing when nothing changed keeps owned-object watches from echoing forever."""
    meta = desired["metadata"]
    live = kube.get(desired["apiVersion"], desired["kind"], meta.get("namespace"), meta["name"])
    if live is not None and is_subset(desired, live):
        return live
    log.info("applying %s %s/%s (%s)", desired["kind"], meta.get("namespace"), meta["name"],
             "created" if live is None else "drifted")
    return kube.apply(desired)


def _ensure_api_key(kube: Kube, body: dict[str, Any], spec: LLMServiceSpec,
                    events: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The API key's Secret for status; creates the generated one when the spec names none.

    Create-only: a Secret of that name that exists (made earlier, or by someone who wanted their
    own key there) is kept as it is, so a key is never overwritten, and the operator needs no
    right to read Secrets. Creating on every reconcile (409 when it exists) also brings back a
    deleted one: deleting it and restarting the pods rotates the key."""
    name = body["metadata"]["name"]
    secret, key = resources.api_key_ref(name, spec)
    if spec.api_key_ref is not None:
        return {"secretName": secret, "key": key, "generated": False}
    try:
        kube.create(resources.api_key_secret(body, secrets.token_urlsafe(32)))
    except ApiError as exc:
        if exc.status != 409:
            raise
    else:
        log.info("created API key Secret %s/%s", body["metadata"].get("namespace"), secret)
        events.append(("Normal", "APIKeyCreated",
                       f"clients must send 'Authorization: Bearer <key>' with the key in Secret "
                       f"{secret} (key {key}); name your own Secret in spec.apiKeySecretRef "
                       "instead to choose it"))
    return {"secretName": secret, "key": key, "generated": True}


NETWORK_POLICY_ENV = "OCTAVO_NETWORK_POLICY"
CLUSTER_DOMAIN_ENV = "OCTAVO_CLUSTER_DOMAIN"


def cluster_domain(environ: Any = os.environ) -> str | None:
    """The chart's `clusterDomain` (e.g. cluster.local) for status.url; unset: the short
    NAME.NAMESPACE.svc form, which resolves in every cluster."""
    return environ.get(CLUSTER_DOMAIN_ENV) or None


def network_policy_settings(environ: Any = os.environ) -> resources.NetworkPolicySettings | None:
    """The chart's `networkPolicy` values, as JSON in OCTAVO_NETWORK_POLICY
    ({"ingressFrom": [...], "egress": [...]}); None (unset): the operator makes none."""
    value = environ.get(NETWORK_POLICY_ENV)
    if not value:
        return None
    settings = json.loads(value)
    egress = settings.get("egress")
    return resources.NetworkPolicySettings(
        ingress_from=tuple(settings.get("ingressFrom") or ()),
        egress=None if egress is None else tuple(egress))


def _ensure_network_policy(kube: Kube, body: dict[str, Any],
                           settings: resources.NetworkPolicySettings | None) -> None:
    if settings is not None:
        ensure(kube, resources.network_policy(body, settings))
    else:  # switched off: remove the one made before
        _delete_owned(kube, body, "networking.k8s.io/v1", "NetworkPolicy",
                      body["metadata"]["name"])


# A ScaledObject or InferencePool whose CRD is not installed is tried again after this long.
MISSING_API_REQUEUE_SECONDS = 60.0


def _ensure_optional(kube: Kube, body: dict[str, Any], spec: LLMServiceSpec,
                     events: list[tuple[str, str, str]]) -> list[str]:
    """Applies the objects of kinds a cluster may lack (KEDA's, the Inference Extension's); the
    kinds it lacks (404), each reported by a Warning Event. The serving objects are applied
    first, so a missing CRD never keeps a model from serving."""
    missing: list[str] = []
    for desired in resources.optional_objects(body, spec):
        try:
            ensure(kube, desired)
        except ApiError as exc:
            if exc.status not in (403, 404):
                raise
            kind, name = desired["kind"], desired["metadata"]["name"]
            missing.append(f"{kind} ({desired['apiVersion']})")
            if exc.status == 404:
                project = "KEDA" if kind == scaling.KEDA_KIND else \
                    "the Gateway API Inference Extension"
                events.append(("Warning", "MissingAPI", f"cannot create {kind} {name}: the "
                               f"cluster does not serve {desired['apiVersion']} (install "
                               f"{project}'s CRD); retrying"))
            else:
                events.append(("Warning", "Forbidden", f"the operator may not create {kind} "
                               f"{name} ({exc}): install the octavo-operator chart with "
                               "inferenceExtension.enabled=true for the endpoint picker's "
                               "objects; retrying"))
            break  # the picker's objects are no use without their pool
    return missing


def _delete_unwanted(kube: Kube, body: dict[str, Any], spec: LLMServiceSpec) -> None:
    """Removes owned objects the spec no longer asks for (autoscaling mode switched or off, the
    InferencePool dropped). A kind the cluster lacks reads as absent."""
    name = body["metadata"]["name"]
    mode = scaling.mode(spec.autoscaling)
    if mode != scaling.MODE_HPA:
        _delete_owned(kube, body, "autoscaling/v2", "HorizontalPodAutoscaler", name)
    if mode != scaling.MODE_KEDA:
        _delete_owned(kube, body, scaling.KEDA_API_VERSION, scaling.KEDA_KIND, name)
    # The picker's objects go with their pool (garbage collection takes them with the
    # LLMService otherwise); looking for them only then spares five reads per reconcile.
    if spec.inference_pool is None and \
            _delete_owned(kube, body, inference_pool.API_VERSION, inference_pool.KIND, name):
        picker = inference_pool.epp_name(name)
        for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service"),
                                  ("rbac.authorization.k8s.io/v1", "RoleBinding"),
                                  ("rbac.authorization.k8s.io/v1", "Role"),
                                  ("v1", "ServiceAccount")):
            _delete_owned(kube, body, api_version, kind, picker)


def _owned_by(obj: dict[str, Any], body: dict[str, Any]) -> bool:
    uid = body["metadata"].get("uid")
    return any(ref.get("uid") == uid and ref.get("kind") == crd.KIND
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _delete_owned(kube: Kube, body: dict[str, Any], api_version: str, kind: str,
                  name: str) -> bool:
    """Deletes the object if it exists and this LLMService owns it; whether it did."""
    namespace = body["metadata"].get("namespace", "default")
    live = kube.get(api_version, kind, namespace, name)
    if live is not None and _owned_by(live, body):
        kube.delete(api_version, kind, namespace, name)
        return True
    return False


def _delete_stale_jobs(kube: Kube, body: dict[str, Any], pair_hash: str | None) -> None:
    """Validation Jobs of pairs the spec no longer names (their verdicts are in status)."""
    namespace = body["metadata"].get("namespace", "default")
    jobs = kube.list("batch/v1", "Job", namespace,
                     {resources.LABEL_SERVICE: body["metadata"]["name"],
                      resources.LABEL_COMPONENT: "validation"})
    for job in jobs:
        job_hash = (job["metadata"].get("labels") or {}).get(resources.LABEL_PAIR_HASH)
        if job_hash != (pair_hash or "")[:63] and _owned_by(job, body):
            kube.delete("batch/v1", "Job", namespace, job["metadata"]["name"])


# --- status --------------------------------------------------------------------------------


def _report_serving(body: dict[str, Any], spec: LLMServiceSpec | None,
                    deployment: dict[str, Any] | None, rollout: st.Rollout,
                    new_status: dict[str, Any], conditions: list[dict[str, Any]],
                    generation: int | None) -> None:
    name = body["metadata"]["name"]
    new_status.update({
        "phase": rollout.phase,
        "replicas": rollout.total,
        "readyReplicas": rollout.ready,
        "selector": resources.selector_string(name),
    })
    if spec is not None:
        new_status["endpoint"] = resources.endpoint(body, spec)
        new_status["url"] = resources.service_url(body, spec, cluster_domain())
        new_status["model"] = spec.model.display
        new_status["draft"] = spec.draft.display if spec.draft is not None else None
    if deployment is not None:
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        served = {"model": annotations.get(resources.ANNOTATION_MODEL, "")}
        if annotations.get(resources.ANNOTATION_DRAFT):
            served["draft"] = annotations[resources.ANNOTATION_DRAFT]
        new_status["served"] = served
    available = rollout.ready > 0 or (rollout.desired == 0 and deployment is not None)
    conditions.append(st.condition(
        st.AVAILABLE, available, "MinimumReplicasAvailable" if available else "NoReplicasReady",
        f"{rollout.ready}/{rollout.desired} replicas ready", generation))
    conditions.append(st.condition(st.PROGRESSING, rollout.phase == st.DEPLOYING, rollout.reason,
                                   rollout.message, generation))


def _observe_existing(kube: Kube, body: dict[str, Any], spec: LLMServiceSpec | None,
                      new_status: dict[str, Any], conditions: list[dict[str, Any]],
                      generation: int | None, blocked: str | None = None,
                      validating: bool = False) -> None:
    """Status while the new spec is not deployed: what the existing Deployment (untouched,
    serving the previous spec) is doing."""
    meta = body["metadata"]
    deployment = kube.get("apps/v1", "Deployment", meta.get("namespace", "default"), meta["name"])
    rollout = st.rollout_of(deployment) if deployment is not None else \
        st.Rollout(st.DEPLOYING, "NotDeployed", "nothing deployed yet", 0, 0, 0)
    _report_serving(body, spec, deployment, rollout, new_status, conditions, generation)
    if deployment is None:
        new_status.pop("endpoint", None)
        new_status.pop("url", None)
    if validating:
        conditions[-1] = st.condition(st.PROGRESSING, True, "Validating",
                                      "waiting for the validation Job before rolling out",
                                      generation)
    elif blocked is not None:
        kept = " (the Deployment keeps serving the previous spec)" if deployment else ""
        conditions[-1] = st.condition(st.PROGRESSING, False, "Blocked",
                                      f"rollout blocked: {blocked}{kept}", generation)


def _finish(kube: Kube, body: dict[str, Any], old_status: dict[str, Any],
            new_status: dict[str, Any], conditions: list[dict[str, Any]],
            drop: tuple[str, ...], events: list[tuple[str, str, str]], stamp: str,
            outcome: Outcome) -> Outcome:
    meta = body["metadata"]
    new_status["phase"] = outcome.phase
    conditions = conditions + st.kstatus_conditions(outcome.phase, outcome.message,
                                                    meta.get("generation"))
    new_status["conditions"] = st.merge_conditions(old_status.get("conditions"), conditions,
                                                   drop=drop, now=stamp)
    patch = status_patch(old_status, new_status)
    if patch:
        kube.patch_status(crd.API_VERSION, crd.KIND, meta.get("namespace", "default"),
                          meta["name"], patch)
    # Events only for news: a condition that changed, not every repeated reconcile.
    old_conditions = {c.get("type"): (c.get("status"), c.get("reason"), c.get("message"))
                      for c in old_status.get("conditions") or []}
    new_conditions = {c["type"]: (c["status"], c.get("reason"), c.get("message"))
                      for c in new_status["conditions"]}
    changed = old_conditions != new_conditions or old_status.get("phase") != outcome.phase
    for type_, reason, message in events:
        if changed or reason in ("ValidationFailed", "APIKeyCreated"):
            try:
                kube.post_event(body, type_, reason, message, stamp)
            except ApiError as exc:  # an Event is a courtesy; never fail the reconcile on it
                log.warning("cannot post event %s on %s: %s", reason, meta["name"], exc)
    return outcome


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new` for the keys `new` names: changed values,
    and null for sub-keys that `new` no longer has (a merge patch would otherwise keep them).
    Empty when nothing changes."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if value is None:
            if key in old:
                patch[key] = None
        elif isinstance(value, dict) and isinstance(before, dict):
            sub = status_patch(before, value)
            sub.update({k: None for k in before if k not in value})
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    return patch
