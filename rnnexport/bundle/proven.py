"""Whether a variant runs here on the CPU it was proven on, as a one-line note.

A bundle's manifest records, per variant, the CPU its checks ran on
(:attr:`~rnnexport.bundle.VariantEntry.cpu`). onnxruntime picks its int8 kernels by the CPU's
features, so a variant proven on one CPU runs other code on a CPU with other features: a
reader that re-proves the variant here says so with :func:`cpu_difference`. Torch-free.
"""

from __future__ import annotations

from rnnexport.core.cpu import Cpu, this_cpu

__all__ = ["cpu_difference"]


def cpu_difference(recorded: Cpu | None, here: Cpu | None = None) -> str | None:
    """None when ``here`` (default: this CPU) has the architecture and features ``recorded``; else how they differ.

    ``recorded`` None (a manifest written before CPUs were recorded) is a difference too:
    nothing says where the variant was proven.
    """
    here = this_cpu() if here is None else here
    if recorded is None:
        return f"the manifest does not record the CPU the variant was proven on; this CPU is {here.describe()}"
    if recorded.machine != here.machine:
        return f"proven on {recorded.describe()}, running on another architecture: {here.describe()}"
    lacks = [f for f in recorded.features if f not in here.features]
    extra = [f for f in here.features if f not in recorded.features]
    if not lacks and not extra:
        return None
    parts = ([f"lacks {', '.join(lacks)}"] if lacks else []) + ([f"adds {', '.join(extra)}"] if extra else [])
    return (f"proven on {recorded.describe()}; this CPU {' and '.join(parts)}, so onnxruntime may run other "
            "kernels here")
