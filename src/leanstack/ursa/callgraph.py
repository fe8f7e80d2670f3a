"""Request classes as call trees: which tiers a request visits, in what order, and how often.

A :class:`Visit` is one call of one tier. Its synchronous calls come in ``groups`` (groups run in
sequence, the calls inside a group in parallel); ``queued`` holds the consumer visits its
asynchronous (queue) edges start. The latency of a visit is its tier's own latency plus, per
group, the slowest call of the group; a class that waits for its pipeline also waits for the
slowest queued branch.
"""

from __future__ import annotations

from dataclasses import dataclass

from leanstack.microservices.app import AppSpec, Call


@dataclass(frozen=True)
class Visit:
    """One call of ``tier``: its synchronous call groups and the consumer visits it queues."""

    tier: str
    groups: tuple[tuple[Visit, ...], ...] = ()
    queued: tuple[Visit, ...] = ()

    def tiers(self) -> list[str]:
        """Every tier visited in this subtree, once per visit (queued branches included)."""
        out = [self.tier]
        for group in self.groups:
            for v in group:
                out += v.tiers()
        for v in self.queued:
            out += v.tiers()
        return out


def class_tree(app: AppSpec, class_name: str) -> Visit:
    """The call tree one request of ``class_name`` walks."""
    return _visit(app, app.classes[class_name].entry)


def visits_per_request(app: AppSpec) -> dict[str, float]:
    """Expected visits of each tier per request of the app's class mix (0 for unvisited)."""
    out = dict.fromkeys(app.services, 0.0)
    for name, share in app.mix().items():
        for tier in class_tree(app, name).tiers():
            out[tier] += share
    return out


def classes_through(app: AppSpec) -> dict[str, list[str]]:
    """Tier -> the classes whose requests visit it."""
    out: dict[str, list[str]] = {t: [] for t in app.services}
    for name in app.classes:
        for tier in dict.fromkeys(class_tree(app, name).tiers()):
            out[tier].append(name)
    return out


def callers(app: AppSpec) -> dict[str, set[str]]:
    """Tier -> tiers that call it synchronously, directly or through other tiers."""
    direct: dict[str, set[str]] = {t: set() for t in app.services}
    for svc in app.services.values():
        for ep in svc.endpoints.values():
            for call in ep.calls:
                direct[call.service].add(svc.name)
    out: dict[str, set[str]] = {}
    for tier in app.services:
        seen: set[str] = set()
        todo = list(direct[tier])
        while todo:
            t = todo.pop()
            if t not in seen:
                seen.add(t)
                todo += direct[t]
        out[tier] = seen
    return out


def _visit(app: AppSpec, call: Call) -> Visit:
    svc = app.services[call.service]
    if svc.is_storage:
        return Visit(call.service)
    ep = svc.endpoints[call.endpoint]
    groups: tuple[tuple[Visit, ...], ...] = ()
    for group in ep.groups:  # a blocking-client call runs alone, before the others
        blocking = [c for c in group if app.services[c.service].blocks_caller]
        rest = tuple(_visit(app, c) for c in group if c not in blocking)
        groups += tuple((_visit(app, c),) for c in blocking) + ((rest,) if rest else ())
    queued = []
    for c in ep.enqueue:
        queue = app.services[c.service].queue
        if queue is not None:  # the enqueue itself is a call to the queue's storage tier
            groups += ((Visit(queue),),)
        queued.append(_visit(app, c))
    return Visit(call.service, groups, tuple(queued))
