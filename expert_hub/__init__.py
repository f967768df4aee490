"""Expert hub: serves a pack's specialist experts over MQTT with dynamic batching."""
