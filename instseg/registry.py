"""What method packages add to the shared machinery, registered when they are imported.

instseg knows no method by name. A method package (``maskpoint``, ``dsg``, ...) registers, in its ``__init__``:

* its ``add_<method>_config(cfg)`` in :data:`METHOD_CONFIG_REGISTRY` (``instseg.config.get_cfg`` calls every one);
* evaluators for what only it predicts in :data:`METHOD_EVALUATOR_REGISTRY`: a function
  ``(cfg, dataset_name, output_folder) -> list of evaluators`` (empty when the config does not ask for them).

Which packages ship is said once, in packaging: setup.py declares each as an entry point of the group
``instseg.methods``; :func:`load_methods` imports them all, so their registrations run.
"""

import functools
import importlib
import logging
from importlib.metadata import entry_points

from fvcore.common.registry import Registry

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "instseg.methods"

METHOD_CONFIG_REGISTRY = Registry("METHOD_CONFIG")
METHOD_CONFIG_REGISTRY.__doc__ = "``add_<method>_config(cfg)`` of every method package, by function name."

METHOD_EVALUATOR_REGISTRY = Registry("METHOD_EVALUATOR")
METHOD_EVALUATOR_REGISTRY.__doc__ = (
    "Method evaluators: ``fn(cfg, dataset_name, output_folder) -> list`` of detectron2 evaluators, by function name."
)


def method_packages():
    """The names of the method packages that ship (the ``instseg.methods`` entry points of the installed project)."""
    return sorted({ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)})


@functools.lru_cache(maxsize=None)
def load_methods() -> tuple:
    """Import every shipped method package (once), so that its registrations run; returns their names."""
    names = method_packages()
    if not names:
        logger.warning(
            "No instseg method package found (entry points '%s'): is the project installed (pip install -e .)?",
            ENTRY_POINT_GROUP,
        )
    for name in names:
        importlib.import_module(name)
    return tuple(names)
