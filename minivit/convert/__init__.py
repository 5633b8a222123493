"""Conversions into minivit models: the authors' checkpoints and timm teachers."""
