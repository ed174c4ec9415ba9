"""tickflow: crypto market data from exchange WebSockets through Kafka and Flink to ClickHouse and Redis."""
