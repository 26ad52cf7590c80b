"""The simulator's state: tasks, uploads, idempotency records, balance, faults and the request log.

Every method is thread-safe: the HTTP handlers run on the server's event loop thread while tests call
``Simulator`` methods from theirs. Nothing here awaits; rendering (``render_path``) blocks and is run
in a worker thread by the caller.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import mimetypes
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from runapi_mcp.catalog import Catalog, get_catalog
from runapi_mcp.simulator import _render
from runapi_mcp.simulator._models import (
    CATALOG_STATUSES,
    DEFAULT_FAIL_REASON,
    SETTABLE_CONFIG,
    CatalogStatus,
    Fault,
    LoggedRequest,
    SentCallback,
    SimulatorConfig,
    TaskOutcome,
)
from runapi_mcp.simulator._tasks import ApiError, OutputSpec, SourceRef, TaskPlan

logger = logging.getLogger("runapi_mcp.simulator")

Phase = Literal["pending", "processing", "completed", "failed"]
FAIL_MARKER = "[sim:fail]"
MAX_LOG = 100_000
PENDING_FRACTION = 0.1


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


@dataclass
class Outcome:
    """A forced end for a task (see ``Simulator.set_task_outcome``). ``status_text`` replaces the terminal
    status string: ``failed`` with ``status_text="timeout"`` (or ``canceled``, ``error``, an unknown one such
    as ``exploded``) ends the task with that status and ``error``."""

    status: TaskOutcome
    error: str | None = None
    status_text: str | None = None
    images: int | None = None
    # What a completed task's ``usage.cost`` reports, in cents (default: its price). RunAPI settles a task
    # at what it really cost, which may differ from the quote's reservation.
    cost_cents: int | None = None


@dataclass
class Task:
    id: str
    service: str
    endpoint: str
    model: str
    path: str
    body: dict[str, Any]
    plan: TaskPlan
    created: float
    created_at: datetime
    duration: float
    fail_reason: str | None
    outcome: Outcome | None = None
    outcome_at: float | None = None
    faults: list[Fault] = field(default_factory=list)
    """Task faults taken at creation (``Fault.task_scoped``): they shape the task's answers."""

    def phase(self, now: float) -> tuple[Phase, float]:
        """The task's state and progress (0..1) at monotonic time ``now``."""
        elapsed = max(0.0, now - self.created)
        fraction = min(1.0, elapsed / self.duration) if self.duration > 0 else 1.0
        forced = self.outcome.status if self.outcome is not None else None
        if forced == "completed":
            return "completed", 1.0
        if forced == "failed":
            return "failed", round(fraction, 3)
        if forced != "running" and fraction >= 1.0:
            return ("failed" if self.fail_reason else "completed"), 1.0
        running: Phase = "pending" if fraction < PENDING_FRACTION else "processing"
        return running, round(min(fraction, 0.99), 3)

    @property
    def error(self) -> str:
        if self.outcome is not None and self.outcome.status == "failed":
            return self.outcome.error or self.fail_reason or DEFAULT_FAIL_REASON
        return self.fail_reason or DEFAULT_FAIL_REASON

    @property
    def visible_outputs(self) -> list[OutputSpec]:
        outputs = self.plan.outputs
        if self.outcome is not None and self.outcome.images is not None:
            return outputs[: max(0, self.outcome.images)]
        return outputs

    def completed_at(self) -> float | None:
        """Monotonic time its images become available, or None when it fails or is held running."""
        if self.outcome is not None:
            return self.outcome_at if self.outcome.status == "completed" else None
        return None if self.fail_reason else self.created + self.duration

    def terminal_at(self) -> float | None:
        """Monotonic time it becomes terminal, or None while that is not known (forced running)."""
        if self.outcome is not None:
            if self.outcome.status == "running":
                return None
            return self.outcome_at
        return self.created + self.duration


@dataclass
class UploadedFile:
    name: str
    path: Path
    size: int
    mime_type: str
    created_at: datetime
    expires_at: datetime


@dataclass
class PendingUpload:
    """A direct upload prepared (``POST /api/v1/files/prepare``), waiting for its PUT and its confirm."""

    signed_id: str
    token: str
    filename: str
    byte_size: int
    checksum: str
    content_type: str
    staged: Path | None = None
    """Where the PUT bytes wait for the confirm (None until the PUT)."""
    confirmed: UploadedFile | None = None


@dataclass
class IdempotencyRecord:
    fingerprint: str
    task_id: str


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_mime(data: bytes, declared: str | None, filename: str | None) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if declared and declared != "application/octet-stream":
        return declared.split(";")[0].strip()
    if filename:
        guessed, _ = mimetypes.guess_type(filename)
        if guessed:
            return guessed
    return "application/octet-stream"


def safe_name(name: str | None, mime: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", (name or "").strip().split("/")[-1]).strip("._")[:96]
    if not stem:
        ext = mimetypes.guess_extension(mime) or ".bin"
        stem = "upload" + (".jpg" if ext in (".jpe", ".jpeg") else ext)
    return f"{uuid.uuid4().hex[:16]}_{stem}"


class SimState:
    def __init__(self, config: SimulatorConfig, data_dir: Path, catalog: Catalog | None = None) -> None:
        self.config = config
        # What ``reset`` restores: ``configure`` changes the config in place (the ``Simulator`` shares it).
        self._initial_config = copy.deepcopy(config)
        self.catalog = catalog or get_catalog()
        self.lock = threading.RLock()
        self._rng = random.Random(config.seed)
        self.files_dir = data_dir / "files"
        self.images_dir = data_dir / "images"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, UploadedFile] = {}
        self.staging_dir = data_dir / "staging"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self._pending_uploads: dict[str, PendingUpload] = {}
        self._catalog_status: dict[tuple[str, str | None], CatalogStatus] = {}
        self.schedules_as_of = datetime.now(UTC)
        self._idempotency: dict[str, IdempotencyRecord] = {}
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self._callbacks: list[SentCallback] = []
        self._next_outcomes: list[Outcome] = []
        self._render_locks: dict[tuple[str, int], threading.Lock] = {}
        self._prerender: ThreadPoolExecutor | None = None
        self.balance_cents = config.initial_balance_cents
        self.spent_cents_total = 0
        self.spent_cents_today = 0
        self.tasks_created = 0
        self.open_streams = 0
        self._planted_keys: set[str] = set()

    def reset(self) -> None:
        """Back to the state of a new simulator with the config it started with: no tasks, uploads,
        idempotency records, faults, queued outcomes, catalog statuses, logged requests or callbacks; the
        starting balance and the seeded durations. Answers still streaming are left alone (``open_streams``
        counts them until their clients hang up); a callback waiting for a forgotten task is never sent."""
        self.shutdown()  # pending pre-renders of the tasks about to be forgotten are dropped
        with self.lock:
            fresh = copy.deepcopy(self._initial_config)
            for name in (f.name for f in dataclasses.fields(fresh)):
                setattr(self.config, name, getattr(fresh, name))
            self._rng = random.Random(self.config.seed)
            self.tasks.clear()
            self.files.clear()
            self._pending_uploads.clear()
            self._catalog_status.clear()
            self.schedules_as_of = datetime.now(UTC)  # a new ETag: a client's cached schedules are stale
            self._idempotency.clear()
            self._faults.clear()
            self._log.clear()
            self._callbacks.clear()
            self._next_outcomes.clear()
            self._render_locks.clear()
            self.balance_cents = self.config.initial_balance_cents
            self.spent_cents_total = self.spent_cents_today = self.tasks_created = 0
            self._planted_keys.clear()
            for folder in (self.files_dir, self.images_dir, self.staging_dir):
                for path in folder.iterdir():
                    path.unlink(missing_ok=True)

    # -- faults ----------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> None:
        with self.lock:
            self._faults.append(dataclasses.replace(fault))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def faults(self) -> list[Fault]:
        with self.lock:
            return [dataclasses.replace(f) for f in self._faults]

    def _use(self, index: int) -> Fault:
        """A copy of the fault at ``index``, counting the use (call with the lock held)."""
        fault = self._faults[index]
        used = dataclasses.replace(fault)
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[index]
        return used

    def take_fault(self, method: str, path: str) -> Fault | None:
        """Use up the first request fault that matches."""
        with self.lock:
            for i, fault in enumerate(self._faults):
                if not fault.task_scoped and fault.matches(method, path):
                    return self._use(i)
            return None

    def take_task_faults(self, path: str) -> list[Fault]:
        """Use up the task faults a task created on ``path`` gets: the first match of each kind and
        ``where`` (call with the lock held, as part of creating the task)."""
        taken: list[Fault] = []
        seen: set[tuple[str, str | None]] = set()
        i = 0
        while i < len(self._faults):
            fault = self._faults[i]
            slot = (fault.kind, fault.where)
            if fault.task_scoped and slot not in seen and fault.matches("POST", path):
                seen.add(slot)
                before = len(self._faults)
                taken.append(self._use(i))
                if len(self._faults) < before:
                    continue  # used up and removed: the next fault moved to index i
            i += 1
        return taken

    # -- streamed answers ------------------------------------------------------------------------
    def stream_opened(self) -> None:
        with self.lock:
            self.open_streams += 1

    def stream_closed(self) -> None:
        with self.lock:
            self.open_streams -= 1

    # -- request log -----------------------------------------------------------------------------
    def key_planted(self, forms: tuple[str, ...]) -> None:
        """Remember the forms of a key an ``echo_key`` fault put in a URL, to keep them out of the log."""
        with self.lock:
            self._planted_keys.update(form for form in forms if form)

    def redact(self, text: str) -> tuple[str, bool]:
        """``text`` without any planted key, and whether it had one."""
        with self.lock:
            found = [form for form in self._planted_keys if form in text]
        # Longest first: the plain key is part of none of its encoded forms, but one form may hold another.
        for form in sorted(found, key=len, reverse=True):
            text = text.replace(form, "[key]")
        return text, bool(found)

    def record(self, entry: LoggedRequest) -> None:
        with self.lock:
            self._log.append(entry)
            if len(self._log) > MAX_LOG:
                del self._log[: len(self._log) - MAX_LOG]

    def requests(self) -> list[LoggedRequest]:
        with self.lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Forget the requests answered and the callbacks made."""
        with self.lock:
            self._log.clear()
            self._callbacks.clear()

    def record_callback(self, entry: SentCallback) -> None:
        with self.lock:
            self._callbacks.append(entry)
            if len(self._callbacks) > MAX_LOG:
                del self._callbacks[: len(self._callbacks) - MAX_LOG]

    def callbacks(self) -> list[SentCallback]:
        with self.lock:
            return list(self._callbacks)

    # -- tasks -----------------------------------------------------------------------------------
    def get_task(self, task_id: str) -> Task | None:
        with self.lock:
            return self.tasks.get(task_id)

    def replay(self, key: str, fp: str) -> Task | None:
        """The task an Idempotency-Key already created (same body), or None; 409 on a different body."""
        with self.lock:
            record = self._idempotency.get(key)
            if record is None:
                return None
            if record.fingerprint != fp:
                raise ApiError(
                    409,
                    "idempotency_conflict",
                    "Idempotency-Key was already used with a different request body",
                    field="Idempotency-Key",
                )
            return self.tasks[record.task_id]

    def _duration(self, model: str, key: str) -> float:
        cfg = self.config
        base = cfg.model_durations.get(model)
        if base is None:
            base = cfg.durations.get(key, cfg.durations.get("1k", 12.0))
        jitter = self._rng.uniform(-cfg.duration_jitter, cfg.duration_jitter) if cfg.duration_jitter else 0.0
        return max(0.0, base * (1.0 + jitter) * cfg.time_scale)

    def create_task(
        self,
        *,
        service: str,
        endpoint: str,
        model: str,
        path: str,
        body: dict[str, Any],
        plan: TaskPlan,
        idempotency_key: str | None,
        fp: str,
    ) -> tuple[Task, bool]:
        """Create and charge a task; returns ``(task, replayed)``. Raises 402 / 409 as ApiError."""
        with self.lock:
            if idempotency_key is not None:
                existing = self.replay(idempotency_key, fp)
                if existing is not None:
                    return existing, True
            if self.balance_cents < plan.price_cents:
                raise ApiError(
                    402,
                    "insufficient_credits",
                    f"Insufficient credits: this task costs {plan.price_cents} cents, "
                    f"the balance is {self.balance_cents} cents",
                )
            fail_reason = plan.fail_reason
            faults = self.take_task_faults(path)
            for fault in faults:
                if fail_reason is None and fault.kind == "fail_task":
                    fail_reason = fault.reason
                elif fail_reason is None and fault.where == "error":
                    # The answer's ``error`` is planted when answering (an echoed key is the poller's).
                    fail_reason = f"{fault.kind} fault"
            if fail_reason is None and FAIL_MARKER in plan.prompt.lower():
                fail_reason = DEFAULT_FAIL_REASON
            now = time.monotonic()
            task = Task(
                id=str(uuid.uuid4()),
                service=service,
                endpoint=endpoint,
                model=model,
                path=path,
                body=body,
                plan=plan,
                created=now,
                created_at=datetime.now(UTC),
                duration=self._duration(model, plan.duration_key),
                fail_reason=fail_reason,
                faults=faults,
            )
            if self._next_outcomes:
                task.outcome = self._next_outcomes.pop(0)
                task.outcome_at = now
            self.tasks[task.id] = task
            self.balance_cents -= plan.price_cents
            self.spent_cents_total += plan.price_cents
            self.spent_cents_today += plan.price_cents
            self.tasks_created += 1
            if idempotency_key is not None:
                self._idempotency[idempotency_key] = IdempotencyRecord(fp, task.id)
            if self.config.prerender and not fail_reason:
                self._schedule_render(task)
            return task, False

    def set_outcome(self, task_id: str | None, outcome: Outcome) -> None:
        with self.lock:
            if task_id is None:
                self._next_outcomes.append(outcome)
                return
            task = self.tasks.get(task_id)
            if task is None:
                raise KeyError(f"no task {task_id!r}")
            task.outcome = outcome
            task.outcome_at = time.monotonic()

    def set_balance(self, cents: int) -> None:
        with self.lock:
            self.balance_cents = cents

    # -- sources ---------------------------------------------------------------------------------
    def source_size(self, ref: SourceRef) -> tuple[int, int] | str:
        """The size of a task's input picture, or why it cannot be had (the task then fails)."""
        with self.lock:
            if ref.kind == "remote":
                return ref.size
            if ref.kind == "file":
                upload = self.files.get(ref.name)
                if upload is None:
                    return f"source image could not be downloaded (404 Not Found): {ref.name}"
                size = _render.image_size(upload.path)
                return size if size is not None else f"source image is not a supported image: {ref.name}"
            task = self.tasks.get(ref.name)
            what = "source image" if ref.kind == "image" else "source task"
            if task is None:
                return f"{what} {ref.name} was not found"
            phase, _ = task.phase(time.monotonic())
            outputs = task.visible_outputs
            if phase != "completed" or ref.index >= len(outputs):
                return f"{what} {ref.name} has no finished image {ref.index}"
            out = outputs[ref.index]
            return out.width, out.height

    def source_image(self, ref: SourceRef | None) -> Image.Image:
        if ref is None:
            return _render.placeholder_source("(none)")
        try:
            if ref.kind == "file":
                with self.lock:
                    upload = self.files.get(ref.name)
                if upload is not None:
                    return _render.open_image(upload.path)
            elif ref.kind in ("image", "task"):
                return _render.open_image(self.render_path(ref.name, ref.index))
        except (OSError, KeyError, ValueError, Image.DecompressionBombError):
            pass
        return _render.placeholder_source(ref.name)

    # -- rendering -------------------------------------------------------------------------------
    def render_path(self, task_id: str, index: int) -> Path:
        """The rendered picture on disk, rendering it on first use (blocking: call in a thread)."""
        with self.lock:
            task = self.tasks[task_id]
            out = task.plan.outputs[index]
            lock = self._render_locks.setdefault((task_id, index), threading.Lock())
        path = self.images_dir / f"{task_id}_{out.filename}"
        if path.exists():
            return path
        with lock:
            if path.exists():
                return path
            img = self._render(task, out)
            tmp = path.with_name(path.name + ".part")
            _render.save(img, tmp, out.fmt)
            tmp.replace(path)
        return path

    def _schedule_render(self, task: Task) -> None:
        """Render a new task's outputs in the background (``prerender``); call with the lock held."""
        if self._prerender is None:
            self._prerender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runapi-sim-render")
        for out in task.plan.outputs:
            self._prerender.submit(self._render_quietly, task.id, out.index)

    def _render_quietly(self, task_id: str, index: int) -> None:
        try:
            self.render_path(task_id, index)
        except Exception:  # the download renders it again (and reports any error) when asked for
            logger.debug("pre-rendering %s image %d failed", task_id, index, exc_info=True)

    def shutdown(self) -> None:
        """Stop background rendering (pending renders are dropped, a running one finishes)."""
        with self.lock:
            executor, self._prerender = self._prerender, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _render(self, task: Task, out: OutputSpec) -> Image.Image:
        w, h = out.width, out.height
        caption = f"RunAPI simulator · {task.model} · {w}x{h} · task {task.id[:8]}"
        seed = f"{task.id}:{out.index}"
        if out.role == "generate":
            return _render.render_generated(w, h, task.plan.prompt, seed, caption)
        source = self.source_image(task.plan.source)
        if out.role == "edit":
            return _render.render_edit(source, w, h, task.plan.prompt, seed, caption)
        if out.role == "upscale":
            return _render.render_upscale(source, w, h, caption)
        if out.role == "layer_background":
            return _render.render_layer_background(source, w, h)
        return _render.render_cutout(source, w, h, variant=1 if out.role == "segment" else 0)

    # -- configuration and availability ----------------------------------------------------------
    def configure(self, changes: dict[str, Any]) -> None:
        """Change ``SETTABLE_CONFIG`` settings of the running simulator (validated as a whole; ValueError)."""
        unknown = sorted(set(changes) - set(SETTABLE_CONFIG))
        if unknown:
            raise ValueError(f"not settable: {', '.join(unknown)}; settable: {', '.join(SETTABLE_CONFIG)}")
        with self.lock:
            candidate = dataclasses.replace(self.config, **changes)  # runs the config's own checks
            for name in changes:
                setattr(self.config, name, getattr(candidate, name))
            if "legacy" in changes or "extra_schedule_rows" in changes:
                self.schedules_as_of = datetime.now(UTC)

    def set_catalog_status(self, model: str, status: str, action: str | None = None) -> None:
        """Set a model's ``catalog_status`` (on one action, or on all of them); ValueError when unknown."""
        if status not in CATALOG_STATUSES:
            raise ValueError(f"status must be one of {', '.join(CATALOG_STATUSES)}, got {status!r}")
        known = set(self.catalog.model_names) | {str(row["model"]) for row in self.config.extra_schedule_rows}
        if model not in known:
            raise ValueError(f"unknown model {model!r}")
        endpoint = action.replace("-", "_") if action is not None else None
        with self.lock:
            if endpoint is None:
                for key in [k for k in self._catalog_status if k[0] == model]:
                    del self._catalog_status[key]
            self._catalog_status[(model, endpoint)] = status  # type: ignore[assignment]
            self.schedules_as_of = datetime.now(UTC)

    def catalog_status(self, model: str, endpoint: str) -> CatalogStatus:
        with self.lock:
            return self._catalog_status.get(
                (model, endpoint), self._catalog_status.get((model, None), "active")
            )

    # -- uploads ---------------------------------------------------------------------------------
    def store_file(self, data: bytes, filename: str | None, declared_mime: str | None) -> UploadedFile:
        """Keep an upload on disk (blocking: call in a thread)."""
        mime = sniff_mime(data, declared_mime, filename)
        name = safe_name(filename, mime)
        path = self.files_dir / name
        path.write_bytes(data)
        now = datetime.now(UTC)
        upload = UploadedFile(name, path, len(data), mime, now, now + timedelta(seconds=self.config.upload_lifetime_s))
        with self.lock:
            self.files[name] = upload
        return upload

    def prepare_upload(self, filename: str, byte_size: int, checksum: str, content_type: str) -> PendingUpload:
        pending = PendingUpload(
            signed_id="sig_" + uuid.uuid4().hex,
            token=uuid.uuid4().hex + uuid.uuid4().hex,
            filename=filename,
            byte_size=byte_size,
            checksum=checksum,
            content_type=content_type,
        )
        with self.lock:
            self._pending_uploads[pending.signed_id] = pending
        return pending

    def pending_upload(self, signed_id: str) -> PendingUpload | None:
        with self.lock:
            return self._pending_uploads.get(signed_id)

    def pending_by_token(self, token: str) -> PendingUpload | None:
        with self.lock:
            return next((p for p in self._pending_uploads.values() if p.token == token), None)

    def stage_upload(self, pending: PendingUpload, data: bytes) -> None:
        """Keep the PUT bytes until the confirm (blocking: call in a thread)."""
        path = self.staging_dir / pending.token
        path.write_bytes(data)
        with self.lock:
            pending.staged = path

    def confirm_upload(self, pending: PendingUpload) -> UploadedFile:
        """Turn a PUT upload into a file (blocking: call in a thread); confirming again answers the same file."""
        with self.lock:
            if pending.confirmed is not None:
                return pending.confirmed
            staged = pending.staged
        assert staged is not None
        upload = self.store_file(staged.read_bytes(), pending.filename, pending.content_type)
        staged.unlink(missing_ok=True)
        with self.lock:
            if pending.confirmed is None:
                pending.confirmed = upload
            return pending.confirmed

    def file_expired(self, upload: UploadedFile) -> bool:
        return datetime.now(UTC) >= upload.expires_at

    def get_file(self, name: str) -> UploadedFile | None:
        with self.lock:
            return self.files.get(name)
