"""Exchange simulator: protocol servers per exchange, true books, fault injection, send log.

Run with ``tickflow simulator``; in tests use ``simulator.testing.running_simulator``.
"""
