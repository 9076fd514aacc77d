"""Not written yet."""
raise SystemExit("test_linger.py: not written yet")
