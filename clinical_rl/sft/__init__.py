"""Supervised fine-tuning on synthesised long-CoT rows: tokenised samples and packed batches."""
