"""Figures, tables and markdown for each study's report."""
