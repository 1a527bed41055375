"""`python -m vjepa_fast.extract`: the entry point of vjepa_fast.jobs.extract (see --help)."""
from vjepa_fast.jobs.extract import main

if __name__ == "__main__":
    main()
