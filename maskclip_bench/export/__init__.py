"""Writing things out for other tools: `model` (a checkpoint as an open_clip local-dir model) and `data`
(`data export`: evaluation sets in CLIP_benchmark's, open_clip's or ImageFolder layouts)."""
