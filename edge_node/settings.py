"""Edge node settings (flags, ATE_* environment, or config file)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from askexpert.protocol import check_name
from askexpert.settings import CommonSettings


class EdgeSettings(CommonSettings):
    node_id: str = Field(default_factory=socket.gethostname, description="this node's id in topics")
    source: str = Field("0", description="camera index, video file, RTSP/GStreamer URL, dir:PATH, dataset:NAME:SPLIT, replay:DIR")
    tau: float | None = Field(None, ge=0.0, le=1.0, description="confidence threshold; default: the pack's")
    tau_mode: Literal["fixed", "adaptive"] = Field(
        "fixed", description="adaptive: lower the effective tau (down to tau_min) so offloads fit what the hubs can answer in time"
    )
    tau_min: float = Field(0.0, ge=0.0, le=1.0, description="adaptive tau's lower bound (the operator's tau is the upper one)")
    target_offload_rate: float | None = Field(
        None, gt=0, description="adaptive: offloads/s this edge aims at, instead of following the hubs' published load"
    )
    top_k: int | None = Field(None, ge=1, description="top-k for routing; default: the pack's k")
    deadline_ms: float = Field(1000.0, gt=0, description="wait this long for an expert, then publish the edge's label")
    frame_deadline: bool = Field(
        True,
        description="carry the time left (deadline_ms) in each offloaded frame, so hubs drop frames too late to answer; "
        "off: only the MQTT expiry (whole seconds), as older edges",
    )
    max_frames: int | None = Field(None, ge=1, description="stop after this many frames")
    fps: float | None = Field(None, ge=0, description="pace file and dataset sources; default as fast as possible")
    batch_size: int = Field(32, ge=1, description="largest micro-batch for the generalist")
    batch_wait_ms: float = Field(
        2.0, ge=0, description="how long a micro-batch waits to fill when frames are queued (none when the queue is empty)"
    )
    offload_window: int = Field(
        256,
        ge=0,
        description="files, folders, datasets, recordings: at most this many offloads unanswered; the edge waits for its hubs "
        "instead of falling back (a replay equals Algorithm 1 at any speed). Live sources keep deadlines only. 0 = no limit",
    )
    live_queue: int = Field(4, ge=1, description="frames a live source may keep waiting (oldest dropped)")
    max_frame_age_s: float = Field(10.0, gt=0, description="/healthz turns unhealthy when a live source gives no frame this long")
    summary_json: Path | None = Field(
        None, description="at exit, also write the run's summary (the JSON line it prints last) to this file, for whoever started it"
    )

    @field_validator("node_id")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        return check_name(v)

    connect_timeout_s: float = Field(10.0, ge=0, description="wait this long for the broker at start, then go on (labels queue)")

    @property
    def deadline_s(self) -> float:
        """The deadline in seconds, as the clocks and timers that enforce it count."""
        return self.deadline_ms / 1000


class CollectSettings(CommonSettings):
    """`edge-node collect`: what to keep of one edge's offloads, and how much (edge_node/collect.py)."""

    node_id: str = Field(description="the edge whose offloaded frames are kept")
    out: Path = Field(description="a new folder for the collected frames (the trainer's `--collected`)")
    max_kept: int = Field(20000, ge=1, description="keep at most this many frames")
    max_mib: float = Field(256.0, gt=0, description="keep at most this many MiB (images and index)")
    edge_conf_min: float = Field(0.0, ge=0.0, le=1.0, description="confidence band: keep frames the edge was at least this sure of")
    edge_conf_max: float = Field(1.0, ge=0.0, le=1.0, description="confidence band: ... and at most this sure of")
    min_expert_conf: float = Field(0.0, ge=0.0, le=1.0, description="keep only answers the expert gave with at least this confidence")
    per_class: int = Field(0, ge=0, description="keep at most this many frames per expert label; 0: no cap")
    max_per_s: float = Field(0.0, ge=0, description="keep at most this many frames a second (bursts of one second's worth); 0: no limit")
    exclude_classes: str = Field(
        "", description="comma-separated class names: a frame the expert or the edge called one of them is never kept"
    )
    exclude_frames: str = Field("", description="frame id ranges never kept, e.g. 0-99,500-599 (the operator's exclusions)")
    max_pending: int = Field(4096, ge=1, description="offloaded frames held while their label is awaited (oldest dropped)")

    @field_validator("node_id")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        return check_name(v)
