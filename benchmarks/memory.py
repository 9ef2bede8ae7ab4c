"""Resident memory of this process, read from Linux's `/proc` (standard library only: the RecBole child imports it)."""

from pathlib import Path


def proc_status_mib(key: str) -> float:
    """A memory line of `/proc/self/status` in MiB: `VmRSS` (resident now) or `VmHWM` (peak resident of this process
    image). NaN where /proc is absent (not Linux)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Restart VmHWM at the current resident size (Linux `clear_refs` 5), so the next reading is one phase's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
