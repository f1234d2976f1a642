"""Storage out of the project folder: S3 sync (`s3` the client, `sync` the incremental sync,
`post_run` the run engine's hook)."""
