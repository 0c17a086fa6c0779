"""Figures: functions that return ``matplotlib.figure.Figure`` (never show or save)."""
