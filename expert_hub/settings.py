"""Expert hub settings (flags, ATE_* environment, or config file)."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, field_validator

from askexpert.protocol import MAX_FRAME_BYTES, MAX_LOAD_INTERVAL_S, MAX_REPLY_FRAMES, NAME_RE, check_name
from askexpert.settings import CommonSettings


class HubSettings(CommonSettings):
    hub_id: str = Field(default_factory=socket.gethostname, description="this hub's id")
    experts: list[str] | None = Field(None, description="serve only these experts, e.g. 0,0-2; default all")
    expert_form: Literal["auto", "full", "compact"] = Field(
        "auto",
        description="auto: the form the pack chose on its validation split (manifest served_form; full where it has none); "
        "full: the pack's whole-ViT experts; compact: its tails on one shared trunk (less memory)",
    )
    share_group: str | None = Field(None, description="subscribe as $share/NAME/... so hubs split the load")
    max_batch: int = Field(
        64, ge=1, le=MAX_REPLY_FRAMES, description="largest inference batch (its answers to one edge travel in one message)"
    )
    max_wait_ms: float = Field(
        2.0, ge=0, description="how long a batch waits to fill after its first frame, only when frames are queued behind it"
    )
    max_payload: int = Field(MAX_FRAME_BYTES, gt=0, description="larger frames messages are rejected")
    queue_size: int = Field(
        4096,
        ge=1,
        description="frames messages waiting for inference, one line per sender node; beyond this the oldest of the longest line is dropped",
    )
    max_time_left_ms: float = Field(
        5000.0,
        gt=0,
        description="a frame's time left is cut to this (frames without a deadline too): a sender cannot buy priority "
        "by claiming it waits longer than the fleet's edges do (5x their 1 s default)",
    )
    node_rate_limit: float | None = Field(
        None, gt=0, description="frames per second one sender node may have admitted (a 1 s burst); beyond, refused and counted"
    )
    reload_drain_s: float = Field(
        5.0,
        gt=0,
        description="after a pack reload (SIGHUP), the old pack answers frames routed with it until none came this long",
    )
    load_interval_s: float = Field(
        1.0,
        ge=0,
        le=MAX_LOAD_INTERVAL_S,
        description="period of the load message (capacity, arrivals, queue) that adaptive-tau edges follow; 0 = off",
    )

    @property
    def answers_as(self) -> str:
        """Who the hub says it is in its replies, and so in expert labels: its broker user where it
        has one (the identity the shipped broker's ACL checks before it lets replies through),
        else its hub id."""
        return self.username if self.username and NAME_RE.fullmatch(self.username) else self.hub_id

    @field_validator("hub_id")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        return check_name(v)

    @field_validator("experts", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v
