"""The one back-off formula: ``base · 2^(n-1)`` seconds before retry ``n``, at most ``cap``.

The client draws its waits uniformly below that ceiling ("full jitter", so streams that
failed together do not retry together); the scheduler, which already spreads streams with
its interval jitter, waits the ceiling itself. Both are tenacity wait strategies, which
also keep a long failure streak from overflowing the float arithmetic.
"""

from __future__ import annotations

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base

# A RetryCallState needs a retrying object; the scheduler's state carries no other data.
_OUTSIDE_A_LOOP = Retrying()


def exponential(base: float, cap: float) -> wait_exponential:
    """``min(cap, base · 2^(n-1))`` before retry ``n``."""
    return wait_exponential(multiplier=base, max=cap)


def full_jitter(base: float, cap: float) -> wait_random_exponential:
    """A uniform draw in ``[0, min(cap, base · 2^(n-1))]`` before retry ``n``."""
    return wait_random_exponential(multiplier=base, max=cap)


def delay_after(wait: wait_base, failures: int) -> float:
    """The wait ``wait`` gives after ``failures`` consecutive failures, outside tenacity."""
    state = RetryCallState(_OUTSIDE_A_LOOP, None, (), {})
    state.attempt_number = max(failures, 1)
    return float(wait(state))
