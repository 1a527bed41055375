"""`python -m vjepa_fast.convert`: the entry point of vjepa_fast.jobs.convert (see --help)."""
from vjepa_fast.jobs.convert import main

if __name__ == "__main__":
    main()
