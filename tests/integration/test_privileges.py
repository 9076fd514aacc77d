"""Not written yet."""
raise SystemExit("test_privileges.py: not written yet")
