"""`python -m vjepa_fast.train`: the entry point of vjepa_fast.jobs.train (see --help)."""
from vjepa_fast.jobs.train import main

if __name__ == "__main__":
    main()
