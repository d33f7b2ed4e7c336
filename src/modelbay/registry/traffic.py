"""A model's traffic policy resolved against its served versions: which version answers a call
that names none (a weighted split: canary; by a header's hash: A/B) and whether it is shadowed.

The policy (settings.TrafficConfig) comes from a model's modelbay.yaml or the management API; the
registry resolves it into a `Route` each time the policy or the model's versions change and swaps
it in with one dict assignment, so a request reads one immutable Route or none (no policy: the
default version, at the cost of one dict lookup). Versions the policy names that are not served
drop out: the remaining weights are renormalised (none left: the default version answers), and
a shadow version that is not served is not shadowed.

Sticky assignment hashes the key (the `sticky.header` value, else the `modelbay-routing-key`)
with BLAKE2b into a bucket in [0, 100) and gives the bucket to the version whose share of the
cumulative weights holds it: the same key always lands on the same version while the versions
served and their weights stay the same.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from modelbay.errors import InvalidInput
from modelbay.settings import TrafficConfig

if TYPE_CHECKING:
    from modelbay.registry.registry import ServedModel
    from modelbay.runtime.context import RequestContext


@dataclass(frozen=True, slots=True)
class Route:
    """A traffic policy as it applies now, immutable: rebuilt when the policy or the versions change.

    policy:  the policy as given.
    split:   the served versions of the policy's split with a weight > 0, in the policy's order.
    bounds:  cumulative shares of `split` in percent: version i answers a draw in
             [bounds[i-1], bounds[i]); the last bound is 100.
    header:  the sticky header's lower-case name, or None.
    shadow:  the served version that shadows calls, or None.
    shadow_percent: the share of calls shadowed, in percent.
    tolerance: how far a shadow's tensors may be from the served ones and still agree.
    """

    policy: TrafficConfig
    split: tuple[str, ...]
    bounds: tuple[float, ...]
    header: str | None
    shadow: ServedModel | None
    shadow_percent: float
    tolerance: float

    def pick(self, context: RequestContext | None, draw: Callable[[], float]) -> str | None:
        """The version of the split that answers a call, or None (the default version) when no
        version of the split is served.

        context: the call's; its sticky header (`context.headers`, lower-case names, or gRPC
                 metadata), else its `routing_key`, is hashed when it has one.
        draw:    a uniform float in [0, 1) (random.random), used when the call has no key.
        """
        split = self.split
        if len(split) < 2:
            return split[0] if split else None
        key = None
        if context is not None:
            key = context.headers.get(self.header) if self.header is not None else None
            if key is None:
                key = context.routing_key
        point = bucket(key) if key is not None else draw() * 100.0
        return split[min(bisect.bisect_right(self.bounds, point), len(split) - 1)]

    def shadows(self, served: ServedModel, draw: Callable[[], float]) -> ServedModel | None:
        """The version to shadow a call that `served` answered to, or None: none is served, the
        draw says no, or it is `served` itself (it would only agree with itself)."""
        shadow = self.shadow
        if shadow is None or shadow is served or draw() * 100.0 >= self.shadow_percent:
            return None
        return shadow

    def shares(self) -> dict[str, float]:
        """The split as it applies now: percent per served version, summing to 100."""
        lows = (0.0, *self.bounds[:-1])
        return {
            version: round(high - low, 6)
            for version, low, high in zip(self.split, lows, self.bounds, strict=True)
        }


def resolve(policy: TrafficConfig, served: Mapping[str, ServedModel]) -> Route | None:
    """`policy` against the versions `served` (by version), or None when it changes nothing
    (no served version in its split, and no served shadow)."""
    weighted = [(v, w) for v, w in (policy.split or {}).items() if v in served and w > 0]
    total = sum(weight for _, weight in weighted)
    bounds = tuple(100.0 * share / total for share in itertools.accumulate(w for _, w in weighted))
    if bounds:
        bounds = (*bounds[:-1], 100.0)  # exactly 100, whatever the rounding
    shadow = policy.shadow
    shadow_model = served.get(shadow.version) if shadow is not None and shadow.percent > 0 else None
    if not weighted and shadow_model is None:
        return None
    return Route(
        policy,
        tuple(version for version, _ in weighted),
        bounds,
        policy.sticky.header.lower() if policy.sticky is not None else None,
        shadow_model,
        shadow.percent if shadow is not None else 0.0,
        shadow.tolerance if shadow is not None else 0.0,
    )


def bucket(key: str) -> float:
    """The sticky bucket of `key`, in [0, 100): its BLAKE2b hash (8 bytes) as a fraction of 2**64.

    Stable across processes and restarts (unlike `hash()`, which is salted per process).
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") * 100.0 / 2**64


def named_versions(policy: TrafficConfig) -> set[str]:
    """The versions a policy names (its split's and its shadow's)."""
    named = set(policy.split or {})
    if policy.shadow is not None:
        named.add(policy.shadow.version)
    return named


def traffic_policy(value: Any) -> TrafficConfig | None:
    """A policy from JSON (the management API's body: an object of TrafficConfig fields), None for
    null. Raises InvalidInput naming the bad field or rule."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"a traffic policy must be a JSON object or null, got {type(value).__name__}")
    try:
        return msgspec.convert(value, TrafficConfig)
    except msgspec.ValidationError as exc:
        message = str(exc)  # the struct's own rules already begin with "traffic:"
        raise InvalidInput(message if message.startswith("traffic") else f"traffic: {message}") from None


def policy_json(policy: TrafficConfig | None) -> dict[str, Any] | None:
    """`policy` as JSON (every field given, defaults too), None for no policy."""
    if policy is None:
        return None
    return {
        "split": policy.split,
        "sticky": msgspec.structs.asdict(policy.sticky) if policy.sticky is not None else None,
        "shadow": msgspec.structs.asdict(policy.shadow) if policy.shadow is not None else None,
    }


def traffic_json(policy: TrafficConfig | None, route: Route | None) -> dict[str, Any]:
    """What the management API says of a model's traffic: `traffic`, the policy as given (null:
    none), and `serving`, how it applies to the versions loaded now: `split`, percent per version
    (null: the default version answers every unversioned call), and `shadow`, the version shadowed
    (null: none)."""
    split = route.shares() if route is not None and route.split else None
    shadow = route.shadow.version if route is not None and route.shadow is not None else None
    return {"traffic": policy_json(policy), "serving": {"split": split, "shadow": shadow}}
