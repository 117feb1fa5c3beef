"""rbc-holo: digital holographic microscopy of stored red blood cells.

One module per stage (see DESIGN.md): ``config``, ``paths``, ``io``, ``labels``,
``simulate``, ``holography``, ``measure``, ``annotate``, ``tiles``, ``datasets``,
``models``, ``diffusion``, ``curate``, ``ssl``, ``train``, ``metrics``, ``infer``,
``storage``, ``plots``, ``pipeline`` and ``cli``.
"""

__version__ = "0.1.0"
