"""Status conventions: conditions (type, status, reason, message, observedGeneration,
lastTransitionTime), a short phase for `kubectl get`, and what a Deployment's status means."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

# Condition types.
SPEC_VALID = "SpecValid"
PAIR_COMPATIBLE = "PairCompatible"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
MODEL_READY = "ModelReady"
# kstatus (sigs.k8s.io/cli-utils) conditions: `kubectl wait --for=condition=Ready`, Flux and
# Argo CD read these; Reconciling and Stalled are "abnormal-true" (True only while it applies).
READY_CONDITION = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

# Phases (the CRD's enum).
VALIDATING = "Validating"
DEPLOYING = "Deploying"
READY = "Ready"
DEGRADED = "Degraded"
BLOCKED = "Blocked"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def condition(type_: str, status: bool | None, reason: str, message: str,
              generation: int | None) -> dict[str, Any]:
    """A condition; `status` None means Unknown. lastTransitionTime is set by merge_conditions."""
    out: dict[str, Any] = {
        "type": type_,
        "status": "Unknown" if status is None else ("True" if status else "False"),
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        out["observedGeneration"] = int(generation)
    return out


def merge_conditions(old: list[dict[str, Any]] | None, new: list[dict[str, Any]],
                     drop: tuple[str, ...] = (), now: str | None = None) -> list[dict[str, Any]]:
    """The new condition list: `new` replaces same-typed ones, `drop` removes types, others stay.
    lastTransitionTime moves only when a condition's status changes."""
    now = now or now_iso()
    previous = {c.get("type"): c for c in old or []}
    replaced = {c["type"] for c in new} | set(drop)
    result = [c for c in old or [] if c.get("type") not in replaced]
    for cond in new:
        before = previous.get(cond["type"])
        same = before is not None and before.get("status") == cond["status"]
        stamp = before.get("lastTransitionTime") if same else None
        result.append({**cond, "lastTransitionTime": stamp or now})
    order = {READY_CONDITION: -3, RECONCILING: -2, STALLED: -1, SPEC_VALID: 0, MODEL_READY: 1,
             PAIR_COMPATIBLE: 2, AVAILABLE: 3, PROGRESSING: 4}
    return sorted(result, key=lambda c: order.get(c.get("type", ""), 99))


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


@dataclass(frozen=True)
class Rollout:
    """What a Deployment's status says, in the LLMService's terms."""

    phase: str  # Deploying, Ready or Degraded
    reason: str
    message: str
    desired: int
    ready: int
    total: int


def rollout_of(deployment: dict[str, Any] | None) -> Rollout:
    if deployment is None:
        return Rollout(DEPLOYING, "Creating", "the Deployment is being created", 0, 0, 0)
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    generation = (deployment.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    progressing = get_condition(status.get("conditions"), "Progressing")

    if progressing and progressing.get("status") == "False":
        return Rollout(DEGRADED, progressing.get("reason") or "RolloutStalled",
                       f"rollout stalled: {progressing.get('message', '')}".strip(),
                       desired, ready, total)
    stale = generation is not None and observed is not None and int(observed) < int(generation)
    rolling = stale or updated < desired or total > updated
    if not rolling and ready >= desired:
        return Rollout(READY, "RolloutComplete", f"{ready}/{desired} replicas ready",
                       desired, ready, total)
    if rolling:
        return Rollout(DEPLOYING, "RollingOut", f"{updated}/{desired} replicas updated, "
                       f"{ready} ready", desired, ready, total)
    return Rollout(DEGRADED, "ReplicasNotReady", f"only {ready}/{desired} replicas ready",
                   desired, ready, total)


def kstatus_conditions(phase: str, message: str, generation: int | None) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled for a phase, as kstatus reads them: Ready=True only when
    every replica of the current spec serves; Reconciling=True while it is getting there
    (validating, downloading, rolling out); Stalled=True when it cannot get there without a
    change (blocked spec or pair, failed download, stalled rollout)."""
    reconciling = phase in (VALIDATING, DEPLOYING)
    stalled = phase in (BLOCKED, DEGRADED)
    return [
        condition(READY_CONDITION, phase == READY, phase, message, generation),
        condition(RECONCILING, reconciling, phase if reconciling else "Settled",
                  message if reconciling else "", generation),
        condition(STALLED, stalled, phase if stalled else "NotStalled",
                  message if stalled else "", generation),
    ]
