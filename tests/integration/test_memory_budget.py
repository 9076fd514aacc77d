"""Not written yet."""
raise SystemExit("test_memory_budget.py: not written yet")
