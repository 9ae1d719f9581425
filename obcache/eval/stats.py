"""Small statistics helpers for the eval report."""
import math


def wilson(successes, trials, z=1.959963984540054):
    """Wilson score interval (lo, hi) of a binomial proportion; 95% by default.

    Unlike the normal interval it stays inside [0, 1] and is not empty at 0 or
    n successes, so 10/10 reads as [0.72, 1.00], not [1, 1].
    """
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return (lo, hi)


def perplexity(nll_sum, count):
    """exp(mean negative log-likelihood); inf when count is 0."""
    return math.exp(nll_sum / count) if count else float("inf")


def mcnemar_exact(b, c):
    """Two-sided exact McNemar p-value for paired binary outcomes: b trials
    where only the first method passed, c where only the second did (the
    trials both or neither passed say nothing about which is better). Under
    the null each discordant trial goes either way with probability 1/2, so
    p = P(Binomial(b + c, 1/2) as far from the middle as min(b, c)), doubled,
    at most 1; 1 when there is no discordant trial."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)
