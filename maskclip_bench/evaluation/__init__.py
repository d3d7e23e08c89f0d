"""Evaluating a checkpoint: `api.evaluate` (below the CLI, never prints) over the `session` (feature
store), the `suites` planner and the `tasks` runners, writing `records` (one JSON per checkpoint and task, the
format `maskclip_bench.results` reads into tables); model loading, the feature cache and the training-time hook."""
