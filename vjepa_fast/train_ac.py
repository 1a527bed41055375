"""`python -m vjepa_fast.train_ac`: the entry point of vjepa_fast.jobs.train_ac (see --help)."""
from vjepa_fast.jobs.train_ac import main

if __name__ == "__main__":
    main()
