"""ensemble-group: group unlabelled product photos into the products they show.

The stages are importable for notebooks::

    from ensemble_group import load_config, group_folder
    run = group_folder("samples/flipkart", load_config("configs/offline.toml"))
    run.groups()
"""

__version__ = "0.1.0"

from ensemble_group.config import Config, ConfigError, load_config  # noqa: E402
from ensemble_group.grouper import Grouper  # noqa: E402
from ensemble_group.pipeline import Run, group_folder, query_index, write_run  # noqa: E402

__all__ = ["Config", "ConfigError", "Grouper", "Run", "group_folder", "load_config", "query_index", "write_run", "__version__"]
