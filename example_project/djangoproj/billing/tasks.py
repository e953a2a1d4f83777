"""The billing job: charge an account through the fenced API, on exactly one node.

Beat runs it on a schedule (CELERY_BEAT_SCHEDULE); anyone may also call
``charge.delay("acme", 100)``. Whatever sends it, one lease per account decides which run
goes ahead, and the API refuses a call whose token is older than one it already accepted.
"""

from django.conf import settings

from example_project import api
from singleton_tasks import LeaseLost, singleton_task

#: The longest the API call may take: guard() refuses to start it with less lease left.
CALL_BUDGET = 1.0


@singleton_task(name="billing.charge", key=lambda account, *args, **kwargs: account)
def charge(self, account: str, amount: int) -> dict:
    slot = self.singleton.slot
    with self.singleton.guard(CALL_BUDGET) as token:
        try:
            return api.charge(
                settings.BILLING_API_URL, token, account, amount, slot=slot, task_id=self.request.id,
                timeout=CALL_BUDGET,
            )
        except api.StaleTokenRejected as exc:
            # A newer holder has called already: this run is stale. Stop quietly, no retry.
            raise LeaseLost(f"billing API refused token {token}: {exc}") from exc
