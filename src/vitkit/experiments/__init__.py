"""The paper's findings as experiments a user re-runs (`vitkit experiment NAME`): each composes
the trainer and evaluation that exist, over several seeds, and writes experiment.json and a
report.html with the statistics and a plot."""
