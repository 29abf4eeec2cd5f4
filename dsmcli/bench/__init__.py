"""``dsm bench``: the registry architectures with random weights (architectures, models), the timed task paths
(paths) and the run that reports them (runner)."""
