"""Exchange connectors: WebSocket (and REST snapshot) -> raw envelopes -> Kafka.

``base.py`` owns the connection lifecycle, ``<exchange>.py`` describes one exchange,
``producer.py`` writes envelopes to Kafka. Run with ``tickflow connector <exchange>``.
"""
