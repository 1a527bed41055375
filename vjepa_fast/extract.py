"""`python -m vjepa_fast.extract`: the entry point of vjepa_fast.jobs.extract (see --help), and its Python API."""
from vjepa_fast.jobs.extract import ExtractConfig, extract, iter_features, main
from vjepa_fast.jobs.extract_data import load_features

__all__ = ["ExtractConfig", "extract", "iter_features", "load_features", "main"]

if __name__ == "__main__":
    main()
