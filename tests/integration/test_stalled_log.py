"""Not written yet."""
raise SystemExit("test_stalled_log.py: not written yet")
