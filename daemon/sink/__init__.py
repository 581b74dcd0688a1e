"""Where changes go: CloudEvent building and the Kafka publisher."""
