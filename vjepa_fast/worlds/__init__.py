"""Generated worlds: physics clips (pre-training data), the tabletop sim and robot trajectories."""
