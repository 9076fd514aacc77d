"""Not written yet."""
raise SystemExit("test_pool_starvation.py: not written yet")
