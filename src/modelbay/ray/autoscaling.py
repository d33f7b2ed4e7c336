"""Serve's autoscaling of a model version on the requests its replicas hold, not on calls.

The front sends a version's requests to its replicas in groups, one call each, at most two calls
in flight per replica (modelbay.ray.remote), so Serve's own count of ongoing requests, which
counts calls, says little of the load: under load one call carries tens of requests, and a busy
replica has two calls whatever the load. Each replica reports the
requests it holds, queued in its batcher or in a batch (`ModelReplica.record_autoscaling_stats`,
Serve's custom autoscaling metrics), and `requests_held_policy` asks for as many replicas as keep
each at `target_ongoing_requests` of them: the rule of Serve's default policy
(ray.serve.autoscaling_policy.replica_queue_length_autoscaling_policy) on that count. Serve
applies min/max replicas, the upscale and downscale delays and the scaling factors around it.
Requests waiting at the front for a call (at most what comes during one call) are not counted.

Only Ray is imported here: Serve pickles this module by value into its controller, which needs
no modelbay installed.
"""

from __future__ import annotations

from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

# The custom metric each replica reports: requests it holds now (Serve averages it over
# look_back_period_s).
HELD = "requests_held"


def requests_held_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Desired replicas = the requests held over every replica / target_ongoing_requests.

    Until the replicas have reported (no replica yet, or the first metrics interval), Serve's
    default policy decides on its own count, which also wakes a version scaled to zero.
    """
    held = (ctx.aggregated_metrics or {}).get(HELD)
    if ctx.current_num_replicas == 0 or not held or ctx.config is None:
        return replica_queue_length_autoscaling_policy(ctx)
    return sum(held.values()) / ctx.config.get_target_ongoing_requests(), {}
