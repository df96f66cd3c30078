"""APScheduler as an alarm clock for expiries.

The database is the truth: at start every active request gets its expiry job rebuilt
from ``ends_at``, and a periodic sweep catches anything a lost or late job missed. A job
that fires late (the process was down) runs as soon as it can rather than being dropped.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from jitcore.engine import Engine
from jitcore.model import AccessRequest, RequestStatus
from jitcore.protection import Protector

log = logging.getLogger(__name__)


class ExpiryClock:
    def __init__(
        self,
        engine: Engine,
        sweep_interval: timedelta = timedelta(seconds=30),
        protector: Protector | None = None,
        reconcile_interval: timedelta = timedelta(minutes=5),
    ) -> None:
        self.engine = engine
        self.sweep_interval = sweep_interval
        self.protector = protector
        self.reconcile_interval = reconcile_interval
        self.scheduler = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )

    def start(self) -> None:
        """Recover half-done work, rebuild expiry jobs from the database, start ticking."""
        self.engine.on_active = self.schedule_expiry
        self.scheduler.start()
        self.engine.recover()
        active = self.engine.store.requests_with_status((RequestStatus.ACTIVE,))
        for request in active:
            self.schedule_expiry(request)
        self.scheduler.add_job(
            self.engine.sweep,
            "interval",
            seconds=self.sweep_interval.total_seconds(),
            id="sweep",
            replace_existing=True,
        )
        if self.protector is not None:
            self.scheduler.add_job(
                self._reconcile,
                "interval",
                seconds=self.reconcile_interval.total_seconds(),
                id="reconcile",
                replace_existing=True,
            )
        log.info("expiry clock started: %d active grant(s) scheduled", len(active))

    def _reconcile(self) -> None:
        assert self.protector is not None
        try:
            self.protector.reconcile()
        except Exception:
            log.exception("reconcile failed; trying again at the next interval")

    def schedule_expiry(self, request: AccessRequest) -> None:
        if request.ends_at is None or request.id is None:
            return
        self.scheduler.add_job(
            self.engine.expire,
            "date",
            run_date=request.ends_at,
            args=[request.id],
            id=f"expire-{request.id}",
            replace_existing=True,
        )

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
