"""The raw archive: the raw topic as Parquet files kept beyond Kafka's retention.

``archiver`` consumes the topic into the files, ``layout`` says where they are and what a
row holds, ``cli`` is ``tickflow archive``; ``jobs.frames.ArchiveFrames`` reads a range back.
docs/archive.md has the layout, the guarantees and how to query it.
"""
