"""Which machine a benchmark ran on: ratios differ between the CPUs these runs have seen."""

from __future__ import annotations


def cpu_model() -> str:
    """The CPU's model name and family/model numbers from /proc/cpuinfo (Linux), else ''."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                        if ":" in line)
    except OSError:
        return ""
    info = {k.strip(): v.strip() for k, v in info.items()}
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')})")
