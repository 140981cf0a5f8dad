"""Evaluation: safety suites and judges, utility suites, statistics, the safety tax and reports."""
