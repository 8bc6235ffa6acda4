"""Evaluation: benchmark runner, scorers, report."""
