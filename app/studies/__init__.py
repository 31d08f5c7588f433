"""Studies: seed-paired factorial grids of experiments and the statistics that compare them.

``spec`` (the one StudySpec model) → ``grid`` (cells × seeds, each a validated experiment
config) → members run as ordinary experiments → ``results`` (``stats`` + ``verdicts``).
"""
