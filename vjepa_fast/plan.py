"""`python -m vjepa_fast.plan`: the entry point of vjepa_fast.jobs.plan (see --help)."""
from vjepa_fast.jobs.plan import main

if __name__ == "__main__":
    main()
