"""Tools beside the job, not part of it: plotting run directories (plot.py, `python -m Utils.tools.plot`) and
replaying a job's schedule in one process (replay.py), which the tests pin real jobs to."""
