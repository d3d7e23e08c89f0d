"""maskclip-bench CLI."""
