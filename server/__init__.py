"""The gRPC edge: thin servicers over the job domain, health, reflection and WatchJob fan-out."""
