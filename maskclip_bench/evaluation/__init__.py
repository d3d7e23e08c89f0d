"""Evaluating a checkpoint: `api.evaluate` (below the CLI, never prints) over the `session` (feature
store), the `suites` planner and the `tasks` runners; model loading, the feature cache and the training-time hook."""
