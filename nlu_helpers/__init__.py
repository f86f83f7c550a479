"""nlu_helpers: the logic behind the nlu-workbook notebooks (arXiv 2410.11020 on today's stack).

Modules, each with one job: ``tasks`` (the GLUE/SuperGLUE registry), ``prompts``,
``parsing``, ``rewards``, ``metrics``, ``data``, ``models``, ``assets`` (offline files).
"""

__version__ = "0.2.0"
