"""Worker processes: where user code runs, sandboxed, fed by the gRPC frontend."""
