"""culm: a durable, event-driven workflow engine."""
