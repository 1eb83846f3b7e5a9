"""Pipeline actors: stage chains as Ray futures and the job CLI (built on actors/)."""
