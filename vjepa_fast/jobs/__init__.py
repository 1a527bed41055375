"""The jobs a user runs (train, train_ac, plan, probe, extract) and the helpers they share."""
