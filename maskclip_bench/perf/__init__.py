"""Cost measurements behind `maskclip-bench bench`: `throughput` (step time against open_clip's loop),
`cost_breakdown` (FLOPs and time per part of the step), `memory` and `peak_memory` (peak memory, largest batch)."""
