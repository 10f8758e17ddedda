"""lmms-eval task configs (passed with `--include_path tasks/`) and the synthetic shards."""
