"""`/jit policy protect|unprotect <vm>` and `/jit scan`: the Protector, from chat.

These are admin commands: :mod:`bot.gate` checks the configure actions before they run.
Protect and unprotect answer in the command's reply. A scan can take a while on a large
subscription, so it posts a direct message to the admin at once and edits it in place
every few VMs, ending with the classification of each VM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient

from bot import messages
from jitcore.errors import JitError
from jitcore.protection import Protector, ScanResult

log = logging.getLogger(__name__)

SCAN_UPDATE_EVERY = 10
"""How many VMs are classified between two edits of the scan message."""


class ProtectionDesk:
    """What the protection commands need: the Protector, the VM list and Slack."""

    def __init__(
        self,
        protector: Protector,
        vm_names: Callable[[], list[str]],
        client: WebClient,
        update_every: int | None = None,
    ) -> None:
        self.protector = protector
        self.vm_names = vm_names
        self.client = client
        self.update_every = max(1, update_every or SCAN_UPDATE_EVERY)

    def protect(self, vm: str, user_id: str) -> str:
        try:
            outcome = self.protector.protect(vm, user_id)
        except JitError as exc:
            return messages.error_text(exc.message)
        return messages.protected_text(outcome.vm_name, outcome.created, outcome.already_protected)

    def unprotect(self, vm: str, user_id: str) -> str:
        try:
            removed = self.protector.unprotect(vm, user_id)
        except JitError as exc:
            return messages.error_text(exc.message)
        return messages.unprotected_text(vm, removed)

    def scan(self, user_id: str) -> None:
        """Scan every VM, reporting progress and then the results in the admin's DM."""
        opened = self.client.conversations_open(users=user_id)
        channel = opened["channel"]["id"]
        posted = self.client.chat_postMessage(
            channel=channel, text=messages.scan_progress_text(0, 0), unfurl_links=False
        )
        ts = posted["ts"]
        try:
            results = self.protector.scan(self.vm_names(), progress=self._progress(channel, ts))
        except JitError as exc:
            log.warning("scan for %s failed: %s", user_id, exc.message)
            self.client.chat_update(
                channel=channel, ts=ts, text=messages.scan_failed_text(exc.message)
            )
            return
        self._finish(channel, ts, results, user_id)

    def _progress(self, channel: str, ts: str) -> Callable[[int, int], None]:
        def show(done: int, total: int) -> None:
            if done % self.update_every or done == total:
                return
            try:
                self.client.chat_update(
                    channel=channel, ts=ts, text=messages.scan_progress_text(done, total)
                )
            except Exception as exc:  # progress is cosmetic; the scan goes on
                log.warning("could not update the scan's progress: %s", type(exc).__name__)

        return show

    def _finish(self, channel: str, ts: str, results: list[ScanResult], user_id: str) -> None:
        counts: dict[str, Any] = {}
        for result in results:
            counts[result.status] = counts.get(result.status, 0) + 1
        self.protector.store.audit("scanned", user_id, None, vms=len(results), counts=counts)
        self.client.chat_update(
            channel=channel,
            ts=ts,
            text=messages.scan_summary(results),
            blocks=messages.scan_blocks(results),
        )
        log.info("scan of %d VMs for %s: %s", len(results), user_id, counts)
