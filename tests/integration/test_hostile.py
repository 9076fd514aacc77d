"""Not written yet."""
raise SystemExit("test_hostile.py: not written yet")
