"""The one report both overhead benchmarks print: per-round ratios and the final RATIO line."""

from __future__ import annotations

import statistics


def report_ratio(rates: dict[str, list[float]], numerator: str, denominator: str, label: str, unit: str) -> None:
    """Per-round ratios (robust to slow drifts in load) and the ratio of the two medians."""
    pairs = [x / y for x, y in zip(rates[numerator], rates[denominator], strict=True)]
    print(f"per-round ratios: {' '.join(f'{p:.2f}' for p in pairs)} (median {statistics.median(pairs):.2f})")
    a, b = statistics.median(rates[numerator]), statistics.median(rates[denominator])
    print(f"RATIO {label} = {a / b:.2f} ({numerator} {a:.3g} {unit}, {denominator} {b:.3g} {unit}, "
          f"median of {len(pairs)})", flush=True)
