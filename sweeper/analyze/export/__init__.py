"""A trial's resolved config -> an mmcls 0.x config, an mmpretrain 1.x config, or a fixed YAML space.

The Python configs hold literals only (dicts, lists, tuples, numbers, strings): no imports, no
calls, so `ast.literal_eval` reads every value and loading one runs no code of ours.
One module per target (`mmcls`, `mmpretrain`, `yaml_space`), what they share in `common`, and
writing the files in `writer`; the names below are the package's public API.
"""

from sweeper.analyze.export.common import SideFiles, native_backbone
from sweeper.analyze.export.mmcls import mmcls_config
from sweeper.analyze.export.mmpretrain import mmpretrain_config, mmpretrain_schedulers
from sweeper.analyze.export.writer import (
           FORMATS,
           default_filename,
           export_trial,
           guess_format,
           render,
           write,
)
from sweeper.analyze.export.yaml_space import yaml_space

__all__ = ["FORMATS", "SideFiles", "default_filename", "export_trial", "guess_format", "mmcls_config",
           "mmpretrain_config", "mmpretrain_schedulers", "native_backbone", "render", "write", "yaml_space"]
