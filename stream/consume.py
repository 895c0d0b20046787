"""The ingest service: Kafka readings → `Ingestor` → dead-letter topic, late log and Parquet archive, with
offsets committed only once everything below them is durable.

One `poll_once()` cycle: decode and window every polled record; produce the dead letters and wait for
their acknowledgement; write late readings to the late log and sealed steps to the archive; hand the
sealed steps to `on_sealed` (the serving side forecasts them there — its work must be durable when it
returns); then commit what the ingest core allows. A crash anywhere before the commit replays harmlessly:
the archive resumes after its last step and readings for archived steps count as `replayed`. An archive
that cannot be written (object store down) holds the commit back, not the forecasts: sealed steps wait
in memory, retried with backoff, up to `max_unarchived` steps, after which reading pauses.

`sensorcast ingest` runs it alone (archive only); `serving.pipeline` runs it with forecasting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from stream.archive import Archive
from stream.clock import wall_ms
from stream.config import KafkaSettings, WindowSettings
from stream.ingest import Ingestor
from stream.kafka_io import DeadLetterProducer, IngestConsumer, ensure_topics
from stream.network import Network
from stream.storage import StorageError, check
from stream.window import SealedStep

log = logging.getLogger(__name__)

OnSealed = Callable[[list[SealedStep]], Any]


class IngestService:
    def __init__(
        self,
        kafka: KafkaSettings,
        window: WindowSettings,
        archive: Archive,
        network: Network,
        *,
        now: Callable[[], int] = wall_ms,
        client_id: str = "sensorcast-ingest",
        max_unarchived: int = 1_000,
    ) -> None:
        self.kafka = kafka
        self.window = window
        self.archive = archive
        self.network = network
        self.now = now
        self.client_id = client_id
        self.ingestor: Ingestor | None = None
        self.consumer: IngestConsumer | None = None
        self.dead_letters: DeadLetterProducer | None = None
        self.resumed_after: int | None = None
        self.steps_sealed = 0
        self.max_unarchived = max_unarchived
        self.unarchived: list[SealedStep] = []  # sealed (and forecast) but not yet durable in the archive
        self._late: list[Any] = []
        self._held: dict[Any, Any] = {}  # offsets waiting for the archive
        self.archive_failures = 0  # failed archive writes, cumulative
        self._streak = 0  # consecutive failures: the backoff
        self._retry_at = 0.0
        self._failing_since: float | None = None
        self._compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compact")
        self._compaction: Future[int] | None = None
        self._assigned_at: dict[int, int] = {}

    def start(self) -> IngestService:
        check(self.archive.root, "archive.root")
        self.archive.claim()
        ensure_topics(
            self.kafka, {self.kafka.readings_topic: self.kafka.partitions, self.kafka.dead_letter_topic: 1}
        )
        self.resumed_after = self.archive.last_step()
        self.ingestor = Ingestor(
            self.network,
            allowed_lateness_ms=self.window.allowed_lateness_ms,
            idle_timeout_ms=self.window.idle_timeout_ms,
            agg=self.window.agg,
            now=self.now,
            max_open_steps=self.window.max_open_steps,
            resume_after_step=self.resumed_after,
            source_topic=self.kafka.readings_topic,
        )
        self.dead_letters = DeadLetterProducer(self.kafka).start()
        self.consumer = IngestConsumer(self.kafka, client_id=self.client_id).start()
        log.info(
            "ingest started",
            extra={"topic": self.kafka.readings_topic, "resume_after_step": self.resumed_after},
        )
        return self

    def poll_once(self, timeout_ms: int = 200, on_sealed: OnSealed | None = None) -> list[SealedStep]:
        """One cycle; returns the steps sealed in it (archived, or waiting for the archive: `unarchived`)."""
        assert self.consumer and self.ingestor and self.dead_letters, "start() first"
        if len(self.unarchived) >= self.max_unarchived:  # the archive is down for long: stop reading
            time.sleep(timeout_ms / 1000)
            self._make_durable([], [], None)
            return []
        dead = []
        for partition, messages in self.consumer.poll_batches(timeout_ms):
            dead += self.ingestor.ingest_many(partition, messages)
        self.ingestor.windower.keep_active(p for p, lag in self.consumer.lag().items() if lag != 0)
        sealed = [] if self._silent_partitions() else self.ingestor.seal()
        self._make_durable(dead, sealed, on_sealed)
        return sealed

    def _silent_partitions(self) -> list[int]:
        """Assigned partitions that have sent nothing yet and are not idle-timed-out.

        The windower's watermark only knows partitions it has seen; an assigned partition whose first
        fetch is still on its way would otherwise let a faster partition seal steps it has readings for.
        """
        assert self.consumer is not None and self.ingestor is not None
        now = self.now()
        seen = set(self.ingestor.windower.partitions)
        silent = []
        for p in self.consumer.assigned():
            since = self._assigned_at.setdefault(p, now)
            if p not in seen and now - since < self.window.idle_timeout_ms:
                silent.append(p)
        return silent

    def drain(self, on_sealed: OnSealed | None = None, timeout_s: float = 60.0) -> list[SealedStep]:
        """End of stream: seal every open step, make it durable, commit everything consumed."""
        assert self.ingestor is not None, "start() first"
        sealed = self.ingestor.flush_all()
        self._make_durable([], sealed, on_sealed)
        deadline = time.monotonic() + timeout_s
        while self.unarchived or self._late:
            if time.monotonic() > deadline:
                raise StorageError(
                    f"archive {self.archive.root} stayed unwritable for {timeout_s:.0f} s; "
                    f"{len(self.unarchived)} sealed steps are not durable and their offsets not committed"
                )
            time.sleep(max(0.0, min(1.0, self._retry_at - time.monotonic())))
            self._make_durable([], [], None)
        return sealed

    def _make_durable(self, dead: list[Any], sealed: list[SealedStep], on_sealed: OnSealed | None) -> None:
        """Dead letters acknowledged, late log and steps archived, `on_sealed` done, then commit. While the
        archive cannot be written, steps wait in memory (retried with backoff), `on_sealed` still runs —
        forecasting goes on —, and offsets are held until the archive has everything below them."""
        assert self.consumer and self.ingestor and self.dead_letters
        self._held.update(self.ingestor.committable())  # valid once what was just taken is durable
        if dead:
            self.dead_letters.send(dead)
            self.dead_letters.flush()
        self._late += self.ingestor.take_late()
        self.unarchived += sealed
        durable = self._archive_pending()
        if sealed:
            self.steps_sealed += len(sealed)
            if on_sealed is not None:
                on_sealed(sealed)
        if durable and self._held:
            self.consumer.commit(self._held)
            self._held = {}
        if durable:  # housekeeping after the cycle's forecasts, never while they are computed
            self._compact()

    def _archive_pending(self) -> bool:
        """Write what waits for the archive; False while it cannot be written (next try after a backoff)."""
        if not (self.unarchived or self._late):
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            if self._late:
                self.archive.append_late(self._late)
                self._late = []
            self.archive.append(self.unarchived)  # idempotent: a retry skips the steps already written
            self.unarchived = []
        except (StorageError, OSError) as exc:
            self.archive_failures += 1
            self._streak += 1
            self._failing_since = self._failing_since or now
            self._retry_at = now + min(30.0, 0.5 * 2 ** min(self._streak - 1, 6))
            extra = {"archive": str(self.archive.root), "waiting_steps": len(self.unarchived)}
            extra |= {"retry_in_s": round(self._retry_at - now, 1), "error": str(exc)[:300]}
            log.warning("archive write failed; sealed steps wait in memory, offsets are held", extra=extra)
            return False
        if self._failing_since is not None:
            log.info("archive writable again", extra={"outage_s": round(now - self._failing_since, 1)})
        self._failing_since, self._streak = None, 0
        return True

    def _compact(self) -> None:
        """Once a UTC day is closed, merge its files (one per step) in the background, so reading a range
        costs a few requests instead of one per step; this loop never waits for it."""
        job = self._compaction
        if job is not None:
            if not job.done():
                return
            self._compaction = None
            try:
                log.info("archive compacted", extra={"files_removed": job.result()})
            except (StorageError, OSError) as exc:  # the parts stay readable; tried again later
                log.warning("archive compaction failed", extra={"error": str(exc)[:300]})
            self.archive.refresh()
        elif self.archive.needs_compaction():
            root, network = self.archive.root, self.network  # its own listing there: no shared state
            self._compaction = self._compactor.submit(lambda: Archive(root, network).compact())

    def lag(self) -> dict[int, int]:
        assert self.consumer is not None
        return self.consumer.lag()

    def close(self) -> None:
        for closer in (self.consumer, self.dead_letters):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # closing must not hide the error that brought us here
                    log.exception("error while closing")
        self.consumer = self.dead_letters = None
        self._compactor.shutdown(wait=False, cancel_futures=True)  # an interrupted one is redone later
