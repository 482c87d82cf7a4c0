"""`jobs`: the command-line client of jobs.v1.JobService, speaking gRPC to the server."""
