"""Measuring the systems: answering an eval set with per-question scores, and
comparing the runs in the tracking store to register a winner."""
