"""Stage 6, report: timing of benchmark runs, and what is printed and written for the user."""
