"""The driver side: gather rows per shard and commit each shard as soon as every one of its videos has reported."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from manifests.schema import clips_to_table
from pipeline.clip import Clip
from pipeline.commits import commit_shard
from pipeline.plan import PlannedVideo
from pipeline.storage import Store

# error_stage of a video whose worker process died under it: no stage reported, so none can be named
LOST_STAGE = "worker"


@dataclass
class _VideoParts:
    parts: dict[int, list[Clip]] = field(default_factory=dict)
    last_part: int | None = None

    @property
    def complete(self) -> bool:
        return self.last_part is not None and all(p in self.parts for p in range(self.last_part + 1))

    def clips(self) -> list[Clip]:
        return [c for p in sorted(self.parts) for c in self.parts[p]]


class ShardCollector:
    """Holds rows of pending shards in memory until each shard is complete, then commits it.

    `kept_rows` (for --redo-errors) are a shard's existing manifest rows that are not being redone; they are
    written back together with the new rows, so the shard's manifest is replaced in one atomic step.
    """

    def __init__(self, store: Store, schema: pa.Schema, recipe_hash: str, expected: dict[str, list[PlannedVideo]],
                 order: dict[str, int], kept_rows: dict[str, list[dict]] | None = None,
                 on_commit: Callable[[str, dict], None] | None = None):
        self.store, self.schema, self.recipe_hash = store, schema, recipe_hash
        self.expected = expected
        self.order = order  # video_id -> position in the plan, for a stable row order in every manifest
        self.kept_rows = kept_rows or {}
        self.videos: dict[str, dict[str, _VideoParts]] = {s: {} for s in expected}
        self.on_commit = on_commit
        self.committed: list[str] = []
        self.commit_errors: dict[str, str] = {}  # shard -> why its commit failed (it stays pending)
        self.commit_seconds = 0.0  # time spent writing manifests and commit records (the run's profile)

    def add(self, shard_id: str, video_id: str, part: int, last: bool, clips: list[Clip]) -> str | None:
        """Record one row; returns the shard id if this row completed (and so committed) its shard."""
        if shard_id not in self.videos:
            return None  # a row of a shard this run does not own (cannot happen unless the plan changed)
        state = self.videos[shard_id].setdefault(video_id, _VideoParts())
        for clip in clips:
            clip.drop_frames()
        state.parts[part] = clips
        if last:
            state.last_part = part
        if self._shard_complete(shard_id):
            self._commit(shard_id)
            return shard_id
        return None

    def _shard_complete(self, shard_id: str) -> bool:
        got = self.videos[shard_id]
        return all(v.video_id in got and got[v.video_id].complete for v in self.expected[shard_id])

    def _commit(self, shard_id: str) -> None:
        clips = [c for state in self.videos.pop(shard_id).values() for c in state.clips()]
        new = clips_to_table(clips, self.schema)
        rows = self.kept_rows.pop(shard_id, []) + new.to_pylist()
        order = self.order
        rows.sort(key=lambda r: (order.get(r["video_id"], -1), r["video_id"], r["clip_index"], r["start_s"]))
        table = pa.Table.from_pylist(rows, schema=self.schema)
        started = time.perf_counter()
        try:
            record = commit_shard(self.store, shard_id, table, self.recipe_hash)
        except OSError as exc:
            # Storage failed past its retries (S3 down, a full disk): the shard has no valid commit record, so it
            # stays pending for the next run, and this run goes on with the other shards.
            self.commit_errors[shard_id] = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            return
        finally:
            self.commit_seconds += time.perf_counter() - started
        self.committed.append(shard_id)
        if self.on_commit:
            self.on_commit(shard_id, record)

    @property
    def pending(self) -> list[str]:
        return sorted(set(self.videos) | set(self.commit_errors))

    def missing_videos(self) -> list[PlannedVideo]:
        """Videos of pending shards whose rows have not all arrived (a worker died with them)."""
        missing = []
        for shard_id in sorted(self.videos):
            got = self.videos[shard_id]
            missing += [v for v in self.expected[shard_id] if not (v.video_id in got and got[v.video_id].complete)]
        return missing

    def record_lost(self, video: PlannedVideo, error: Exception) -> None:
        """One error row for a video whose rows never came back, replacing any part that did; it may commit."""
        clip = Clip(video_id=video.video_id, video_uri=video.uri, shard_id=video.shard_id)
        clip.fail(LOST_STAGE, error)
        self.forget(video)
        self.add(video.shard_id, video.video_id, 0, True, [clip])

    def forget(self, video: PlannedVideo) -> None:
        """Drop what arrived of a video, before it is run again whole."""
        self.videos[video.shard_id].pop(video.video_id, None)
