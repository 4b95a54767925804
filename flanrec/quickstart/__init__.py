"""`python -m flanrec.quickstart`: the README's accuracy experiment end to end
(`flanrec.quickstart.job`)."""
