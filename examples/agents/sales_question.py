"""The data question the agent examples answer, and how their offline scripted models read the
sandbox's answer: kept here so each example shows only its framework's wiring."""

from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Mapping
from typing import Any

SALES = {"Jan": 4210, "Feb": 3987, "Mar": 4633, "Apr": 5012, "May": 4876, "Jun": 5390,
         "Jul": 6125, "Aug": 5874, "Sep": 5011, "Oct": 4702, "Nov": 5583, "Dec": 5940}  # fmt: skip
QUESTION = (
    f"Monthly sales: {SALES}. Which month had the highest sales, and what is the sample standard "
    "deviation of the monthly sales, to 4 decimals?"
)
INSTRUCTIONS = "Compute every number with the run_python tool; never estimate."
# The scripted model's program. Its last expression comes back as the result's `return_value`.
CODE = f"""import statistics
sales = {SALES!r}
best = max(sales, key=sales.get)
{{"best_month": best, "stdev": f"{{statistics.stdev(sales.values()):.4f}}"}}"""


def answer(result: Mapping[str, Any]) -> str:
    """The scripted model's answer, read from run_python's structured result (never from CODE)."""
    if result.get("exit_code") != 0:
        return f"The sandbox run failed: {result!r}"
    found = ast.literal_eval(result["return_value"])
    return f"{found['best_month']} had the highest sales; the sample standard deviation is {found['stdev']}"


def summary(result: object) -> str:
    """A log line for a run_python result."""
    if not isinstance(result, dict):
        return repr(result)[:300]
    shown = ("exit_code", "stdout", "stderr", "return_value", "error")
    return ", ".join(f"{key}={result[key]!r}" for key in shown if result.get(key) not in (None, ""))


def model_name(description: str, example: str) -> str | None:
    """The model the command line (--model) or AGENT_MODEL names; None: the offline scripted one."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("AGENT_MODEL"), help=f"e.g. {example}")
    name: str | None = parser.parse_args().model
    return name
