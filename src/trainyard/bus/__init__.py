"""The event bus: committed job events fanned out to live subscribers. One interface; memory and Kafka."""
