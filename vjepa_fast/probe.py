"""`python -m vjepa_fast.probe`: the entry point of vjepa_fast.jobs.probe (see --help)."""
from vjepa_fast.jobs.probe import main

if __name__ == "__main__":
    main()
