"""Scenario 6: a rolling update of the runtime under a steady stream of requests loses none.

Requests go through the Service's cluster IP (the node agent's proxy picks a ready endpoint per
connection, as kube-proxy does) with no client retries, so zero failures means the runtime pods
drain: an old pod leaves the endpoints before its server stops, and finishes what it accepted.
"""

from __future__ import annotations

import pytest

from e2e import serving
from e2e.cluster import wait_for

pytestmark = pytest.mark.e2e


def test_rolling_update_under_load_fails_no_request(cluster, operator, runtime_available, namespace):
    document = serving.example("demo.yaml")
    name = document["metadata"]["name"]
    serving.apply(cluster, namespace, document)
    llms = serving.wait_phase(cluster, namespace, name, "Ready", 420)
    before = serving.owned_deployment(cluster, namespace, llms)
    old_pods = {p["metadata"]["name"] for p in cluster.pods(namespace)}

    base_url = serving.service_url(cluster, namespace, llms)
    key = serving.api_key(cluster, namespace, llms)
    model = serving.served_model(base_url, key)
    # A spec change that changes the pod template, so the Deployment rolls.
    max_num_seqs = int(document["spec"].get("maxNumSeqs", 8))
    update = serving.with_spec(document, maxNumSeqs=max_num_seqs + 1)

    with serving.RequestStream(base_url, model, key) as stream:
        stream.wait_for_successes(5, 120)
        serving.apply(cluster, namespace, update)
        deployment_name = before["metadata"]["name"]
        wait_for(lambda: serving.owned_deployment(cluster, namespace, llms)["metadata"]["generation"]
                 > before["metadata"]["generation"], 120, "the Deployment to change", interval_s=1)
        cluster.kubectl("rollout", "status", f"deployment/{deployment_name}", "-n", namespace,
                        "--timeout=420s", timeout_s=430)
        wait_for(lambda: not old_pods & {p["metadata"]["name"] for p in cluster.pods(namespace)}, 180,
                 "the old pods to be gone", interval_s=1)
        successes_after_rollout = stream.successes
        stream.wait_for_successes(successes_after_rollout + 5, 120)

    serving.wait_phase(cluster, namespace, name, "Ready", 120)
    assert not stream.failures, f"{len(stream.failures)} of {stream.successes + len(stream.failures)} " \
                                f"requests failed during the rollout: {stream.failures[:5]}"
