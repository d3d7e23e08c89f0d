"""From evaluation records (`maskclip_bench.evaluation.records`) to tables: `report` and `aggregate`
(markdown/CSV tables), `comparison` (against the published rows), `curves`, and the statistics they print
(`significance`, `chance`)."""
