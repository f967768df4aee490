"""Prometheus metrics for both components (one registry per process, labelled by role)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

FRAMES = Counter("ate_frames_total", "Frames read from the source", ["node"])
LABELS = Counter("ate_labels_total", "Final labels published, by source", ["node", "source"])
OFFLOADS = Counter("ate_offloads_total", "Frames offloaded, by expert", ["node", "expert"])
LATE_REPLIES = Counter("ate_late_replies_total", "Expert replies after the deadline or unknown", ["node"])
DROPS = Counter("ate_dropped_frames_total", "Frames dropped, by reason", ["component", "reason"])
REJECTED = Counter("ate_rejected_messages_total", "Messages rejected, by reason", ["component", "reason"])
QUEUE_DEPTH = Gauge("ate_queue_depth", "Items waiting in a queue", ["component", "queue"])
BATCH_SIZE = Histogram("ate_batch_size", "Inference batch sizes", ["component", "model"], buckets=BATCH_BUCKETS)
INFER_MS = Histogram("ate_inference_ms", "Inference time per batch", ["component", "model"], buckets=LATENCY_BUCKETS_MS)
LABEL_LATENCY_MS = Histogram("ate_label_latency_ms", "Capture to final label, by source", ["node", "source"], buckets=LATENCY_BUCKETS_MS)
OFFLOAD_RTT_MS = Histogram("ate_offload_rtt_ms", "Offload sent to expert reply received, at the edge", ["node"], buckets=LATENCY_BUCKETS_MS)
HUB_FRAMES = Counter("ate_hub_frames_total", "Frames answered by the hub, by expert", ["hub", "expert"])
SOURCE_RECONNECTS = Counter("ate_source_reconnects_total", "Attempts to reopen a live source that dropped", ["outcome"])
FRAME_AGE_S = Gauge("ate_last_frame_age_seconds", "Seconds since the source gave its last frame", ["node"])
TAU = Gauge("ate_tau", "Current confidence threshold", ["node"])
TAU_EFFECTIVE = Gauge("ate_tau_effective", "Threshold the last batch was gated with (adaptive tau: within tau_min..tau)", ["node"])
EXPIRED = Counter("ate_expired_frames_total", "Frames the hub dropped before inference: their edge stops waiting first", ["hub", "by"])
CAPPED = Counter("ate_hub_capped_frames_total", "Frames whose time left the hub cut to its max_time_left_ms", ["hub"])
RATE_LIMITED = Counter("ate_hub_rate_limited_frames_total", "Frames refused at admission: their node sent beyond node_rate_limit", ["hub"])
PACK_INFO = Gauge("ate_pack_info", "1 for the pack (id, version) a component serves with", ["component", "pack", "version"])
PACK_RELOADS = Counter("ate_pack_reloads_total", "Pack hot reloads, by result (loaded, refused, unchanged)", ["component", "result"])
MQTT_BROKER = Gauge("ate_mqtt_broker", "1 for the broker of its list a client is connected to, else 0", ["role", "id", "broker"])
MQTT_FAILOVERS = Counter("ate_mqtt_failovers_total", "Moves of a client to the next broker of its list", ["role", "id"])
MQTT_INFLIGHT_CAP = Gauge("ate_mqtt_inflight_cap", "In-flight QoS 1 limit: the broker's Receive Maximum", ["role", "id"])
GATED = Counter("ate_gated_frames_total", "Frames the edge gated (alpha = offloads / gated)", ["node"])
EXPERT_ANSWERS = Counter("ate_expert_answers_total", "Offloads an expert answered in time", ["node", "expert"])
DISAGREEMENTS = Counter(
    "ate_expert_disagreements_total", "Answered offloads whose expert label differs from the edge's top-1", ["node", "expert"]
)
QUALITY_WINDOW = Gauge(
    "ate_quality_window", "Share over the node's sliding window (signal alpha or disagreement; NaN until full)", ["node", "signal"]
)
QUALITY_BAND = Gauge(
    "ate_quality_band",
    "The pack's band for a signal (bound low, expected, high); NaN without one or at another tau",
    ["node", "signal", "bound"],
)
HUB_BUSY = Gauge("ate_hub_busy_ratio", "Share of the last load interval the hub spent answering (1: at its capacity)", ["hub"])
COLLECTED = Counter("ate_collected_frames_total", "Offloaded frames a collector kept or skipped, by outcome", ["node", "outcome"])
