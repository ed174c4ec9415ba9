"""tickflow: crypto market data, exchange WebSockets -> Kafka -> Flink -> ClickHouse/Redis."""
