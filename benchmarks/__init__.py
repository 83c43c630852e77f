"""Benchmarks: our daemon against Celery, Dramatiq, taskiq, SAQ, arq and RQ on the same work
(``python -m benchmarks``), and a profile of our daemon under load (``python -m benchmarks.profile_ours``).
Figures are printed, never asserted."""
