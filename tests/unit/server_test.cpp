// tests/unit/server_test.cpp: the server through the library API, on a real loop (being written).
