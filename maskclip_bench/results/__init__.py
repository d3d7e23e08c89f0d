"""From evaluation records to tables: `records` (one JSON per checkpoint and task), `report` and `aggregate`
(markdown/CSV tables), `comparison` (against the published rows), `curves`, and the statistics they print
(`significance`, `chance`)."""
