"""MaskCLIP training core."""
