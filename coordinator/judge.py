"""The coordinator's early answers: every owner's policy, verified, judged as the enclaves will.

The coordinator is not trusted with the rules: each department enclave judges again by its own
policy and refuses what it does not allow. The early answer only spares requesters a round trip
and lets officers see what waits for them. Policies are read from the federation directory on
every decision and accepted only when the owning department's pinned officers signed them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable

from dataisland.errors import DataislandError
from dataisland.federation import Federation
from dataisland.identity import Principal
from dataisland.v1 import common_pb2
from policies.checker import Decision, Reason, check
from policies.document import Policy
from policies.keeper import PolicyKeeper
from policies.sqlfront import ParsedQuery

log = logging.getLogger("dataisland.coordinator.judge")

APPROVAL_RULE = "approval.manual"


class Judge:
    """Holds one verified policy per department and decides early."""

    def __init__(
        self,
        federation: Federation,
        *,
        clock: Callable[[], dt.datetime],
        on_activation: Callable[[Policy, bytes], None] | None = None,
    ) -> None:
        self.federation = federation
        self.clock = clock
        # Called once per newly seen policy (with its signature file), to log its activation.
        self.on_activation = on_activation
        self._active: dict[str, str] = {}
        self.keepers = {
            name: PolicyKeeper(
                department=name,
                officers=federation.officer_keys(name),
                required=entry.signatures_required,
            )
            for name, entry in federation.departments.items()
        }

    def policy(self, department: str) -> Policy | None:
        """`department`'s verified policy, or None if it has none that verifies (logged)."""
        try:
            document, signatures = self.federation.read_policy(department)
            policy = self.keepers[department].accept(document, signatures)
        except DataislandError as exc:
            log.warning("no usable policy of %s: %s", department, exc)
            return None
        if self._active.get(department) != policy.hash:
            if self.on_activation is not None:
                self.on_activation(policy, signatures)
            self._active[department] = policy.hash
        return policy

    def decide(self, parsed: ParsedQuery, *, requester: Principal, purpose: str) -> Decision:
        """Every owner's judgement of the query (a missing policy denies)."""
        policies = {}
        for department in self.keepers:
            policy = self.policy(department)
            if policy is not None:
                policies[department] = policy
        return check(
            parsed,
            requester=requester,
            purpose=purpose,
            policies=policies,
            catalog=self.federation.catalog(),
            now=self.clock(),
        )


def waiting_for(decision: Decision) -> set[str]:
    """The departments whose officers must approve before the query runs."""
    return {r.department for r in decision.reasons if r.rule == APPROVAL_RULE and r.department}


def reasons_to_proto(reasons: Iterable[Reason]) -> list[common_pb2.Reason]:
    """The checker's reasons as wire messages."""
    return [
        common_pb2.Reason(
            rule=r.rule,
            table=r.table or "",
            column=r.column or "",
            function=r.function or "",
            message=str(r),
        )
        for r in reasons
    ]
