// app/log_writer.cpp: being written.
